import subprocess
import sys

import pytest
import torch

from hypermeta import (
    Episode,
    FeatureEncoder,
    HashedLabelEncoder,
    SetEncoder,
    TaskEmbedding,
    TextEncoder,
    stable_hash,
)


def episode(descriptor=None, num_tasks=3, shots=5, mask=None, y=None):
    return Episode(
        support_x=torch.randn(num_tasks, shots, 2),
        support_y=torch.randn(num_tasks, shots, 1) if y is None else y,
        query_x=torch.randn(num_tasks, 4, 2),
        query_y=torch.randn(num_tasks, 4, 1),
        descriptor=descriptor,
        support_mask=mask,
    )


def test_task_embedding_looks_up_ids_and_names_unknown_ones():
    enc = TaskEmbedding(5, 8)
    ep = episode(torch.tensor([0, 4, 4]))
    z = enc(ep)
    assert z.shape == (3, 8) and torch.equal(z[1], z[2])
    assert enc.problems(ep) == []
    assert "unknown task ids [7]" in enc.problems(episode(torch.tensor([0, 7, 1])))[0]
    assert "integer task ids" in enc.problems(episode(torch.randn(3)))[0]


def test_stable_hash_is_identical_in_another_process():
    labels = ["cat", "dog", "Straße", ""]
    code = ("from hypermeta import stable_hash, HashedLabelEncoder;"
            f"print([stable_hash(s) for s in {labels!r}]);"
            f"print(HashedLabelEncoder(8).bucket_ids({labels!r}).tolist())")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2)]
    assert runs[0] == runs[1]
    assert runs[0].splitlines()[0] == str([stable_hash(s) for s in labels])


def test_hashed_label_encoder_same_label_same_embedding_unseen_labels_work():
    enc = HashedLabelEncoder(8, buckets=64)
    z = enc(episode(["cat", "never seen before", "cat"]))
    assert z.shape == (3, 8)
    assert torch.equal(z[0], z[2]) and not torch.equal(z[0], z[1])
    assert enc.problems(episode(torch.tensor([1, 2, 3])))


def test_feature_encoder_fit_normalises_training_descriptors():
    enc = FeatureEncoder(2, 4)
    train = torch.randn(100, 2) * torch.tensor([10.0, 0.1]) + torch.tensor([5.0, -3.0])
    enc.fit(train)
    normalised = (train - enc.mean) / enc.std
    torch.testing.assert_close(normalised.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std(0), torch.ones(2), atol=1e-5, rtol=0)
    assert enc(episode(torch.randn(3, 2))).shape == (3, 4)
    with pytest.raises(ValueError, match=r"shape \[N >= 2, 2\]"):
        enc.fit(torch.randn(10, 3))
    assert "shape [T, 2]" in enc.problems(episode(torch.randn(3, 5)))[0]


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_set_encoder_is_permutation_invariant_and_honours_the_mask(pooling):
    enc = SetEncoder(2, 1, 8, hidden=16, pooling=pooling)
    ep = episode(shots=6)
    perm = torch.randperm(6)
    shuffled = Episode(ep.support_x[:, perm], ep.support_y[:, perm], ep.query_x, ep.query_y)
    torch.testing.assert_close(enc(ep), enc(shuffled))
    # padding: 2 garbage rows masked out == the 4 real rows alone
    mask = torch.tensor([[True] * 4 + [False] * 2] * 3)
    padded = Episode(ep.support_x, ep.support_y, ep.query_x, ep.query_y, support_mask=mask)
    padded.support_x[:, 4:] = 1e3
    real = Episode(ep.support_x[:, :4], ep.support_y[:, :4], ep.query_x, ep.query_y)
    torch.testing.assert_close(enc(padded), enc(real))


def test_set_encoder_one_hot_labels_for_classification():
    enc = SetEncoder(2, 3, 8, num_classes=3)
    labels = torch.tensor([[0, 1, 2, 0, 1]] * 3)
    ep = episode(y=labels)
    assert enc(ep).shape == (3, 8) and enc.problems(ep) == []
    assert "0..2" in enc.problems(episode(y=labels + 1))[0]
    assert "integer class labels" in enc.problems(episode())[0]


def test_text_encoder_embeds_offline_caches_and_is_semantic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TextEncoder(16)
    texts = ["regress a sine wave", "fit a sinusoid curve", "classify photos of dog breeds"]
    sentences = enc.embed_text(texts)
    assert sentences.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(sentences[0], sentences[1], dim=0) > cos(sentences[0], sentences[2], dim=0)
    with monkeypatch.context() as patch:  # a second call must come from the cache
        from hypermeta.text import shared_embedder

        patch.setattr(shared_embedder(), "_model", lambda: pytest.fail("cache missed"))
        torch.testing.assert_close(enc.embed_text(texts[::-1]), sentences.flip(0))
    z = enc(episode(texts))
    assert z.shape == (3, 16)
    assert "text strings" in enc.problems(episode(torch.tensor([1, 2, 3])))[0]
    assert set(enc.state_dict()) == {"proj.weight", "proj.bias"}
