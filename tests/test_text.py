"""Text tasks: the WordNet parser on a tiny dict made here, MiniLM embeddings and their cache,
the MiniLM LoRA target (batched = per task, merged = unmerged), zero-shot class heads,
export (safetensors, ONNX, PEFT) and serving texts and descriptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hypermeta import ClassHead, Episode, FunctionalTarget, HyperModel, RunConfig, fit
from hypermeta.tasks import wordnet
from hypermeta.tasks.wordnet import (
    definition,
    fixed_class_lists,
    load_glosses,
    prepare_wordnet,
    read_wordnet,
    wordnet_tasks,
)
from hypermeta.text import MiniLMTop, TextEmbedder, shared_embedder

DOMAINS = {  # domain lemma -> example definitions (6 per domain)
    "physics": ["an elementary particle with negative charge", "the force that pulls masses",
                "energy carried by light", "a unit of electric current",
                "the study of motion of bodies", "a particle made of quarks"],
    "cooking": ["to heat food in an oven", "a pan used for frying eggs",
                "to cut vegetables into small cubes", "a sauce made from tomatoes",
                "to boil pasta in salted water", "a spoon for stirring soup"],
    "law": ["a person accused of a crime in court", "the judge's final decision",
            "a written agreement between parties", "to bring a lawsuit against someone",
            "evidence given under oath", "the crime of stealing property"],
    "music": ["a sequence of notes forming a tune", "an instrument with strings and frets",
              "the speed at which a piece is played", "a group of musicians playing together",
              "to sing in harmony with others", "a symbol written on a staff"],
    "sport": ["a game played with a ball and a bat", "the player who guards the goal",
              "to run a long race", "a match between two teams",
              "the referee's signal to stop play", "a trophy won by the champion"],
    "botany": ["the green pigment of plants", "a flower's organ that makes pollen",
               "the root system of a tree", "a plant that lives for many years",
               "to grow from a seed", "the leaf of a fern"],
}


def write_tiny_wordnet(folder: Path) -> Path:
    """A WordNet 3.0 dict in the real file format: a licence header, one domain synset per
    domain, its examples pointing at it with ``;c``, one gloss with two domains, one with a
    parenthetical qualifier and a quoted example."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by  "]
    offset = 1000
    for d, (name, examples) in enumerate(DOMAINS.items()):
        domain_offset = offset
        lines.append(f"{domain_offset:08d} 03 n 01 {name} 0 000 | the field of {name}; "
                     f'"{name} is studied"  ')
        offset += 100
        for i, text in enumerate(examples):
            gloss = f"({name}) {text}" if i == 0 else text
            lines.append(f"{offset:08d} {4 + d:02d} n 01 word{offset} 0 001 ;c "
                         f'{domain_offset:08d} n 0000 | {gloss}; "an example"  ')
            offset += 100
    first, second = 1000, 1700
    lines.append(f"{offset:08d} 04 n 02 both 0 both_ways 1 002 ;c {first:08d} n 0000 ;c "
                 f"{second:08d} n 0000 | belongs to two domains  ")
    (folder / "data.noun").write_text("\n".join(lines) + "\n")
    (folder / "data.verb").write_text(f"{1:08d} 30 v 01 run 0 000 | move fast on foot  \n")
    (folder / "data.adj").write_text(f"{1:08d} 00 a 01 big 0 000 | large in size  \n")
    (folder / "data.adv").write_text(f"{1:08d} 02 r 01 fast 0 000 | quickly  \n")
    return folder


LISTS = {"train": ["physics.n.00001000", "cooking.n.00001700", "law.n.00002400"],
         "val": ["music.n.00003100"],
         "test": ["sport.n.00003800", "botany.n.00004500"]}


@pytest.fixture()
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(wordnet, "MIN_DOMAIN_EXAMPLES", 5)
    monkeypatch.setenv("HYPERMETA_CACHE", str(tmp_path / "cache"))
    return write_tiny_wordnet(tmp_path / "dict")


def tiny_tasks(folder: Path, **kwargs: object) -> wordnet.WordNetTasks:
    lists = {**LISTS, "train": LISTS["train"] + ["music.n.00003100"], "val": []}
    options = {"ways": 2, "shots": 1, "queries": 2, "class_lists": lists, **kwargs}
    return wordnet_tasks(wordnet_dir=str(folder), **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- parsing
def test_definition_drops_examples_and_qualifiers() -> None:
    assert definition('(physics) (rare) an ideal space; "a phase space"') == "an ideal space"
    assert definition("a pan (as for eggs); the rest") == "a pan (as for eggs); the rest"


def test_tiny_wordnet_parses_labels_and_descriptions(tiny: Path) -> None:
    glosses = read_wordnet(tiny)
    assert list(glosses.domain_names) == list(DOMAINS)
    assert list(glosses.domain_keys) == [k for split in LISTS.values() for k in split]
    texts = [str(t) for t in glosses.text]
    assert "an elementary particle with negative charge" in texts  # qualifier, example gone
    assert not any("the field of" in t for t in texts)  # domain synsets only describe
    assert glosses.domain_descriptions[0] == "the field of physics"
    both = texts.index("belongs to two domains")
    assert glosses.domain[both] == -1  # ambiguous: no domain label
    assert np.bincount(glosses.domain[glosses.domain >= 0]).tolist() == [6] * 6
    assert glosses.lexname[texts.index("move fast on foot")] == 30


def test_prepared_file_round_trips_and_damage_is_named(tiny: Path, tmp_path: Path) -> None:
    out = prepare_wordnet(str(tiny), str(tmp_path / "wn.npz"))
    parsed, loaded = read_wordnet(tiny), load_glosses(out)
    assert all(np.array_equal(getattr(parsed, k), getattr(loaded, k))
               for k in ("text", "domain", "lexname", "domain_keys"))
    out.write_bytes(out.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable npz"):
        load_glosses(out)


def test_missing_or_malformed_dict_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        read_wordnet(tmp_path)
    folder = write_tiny_wordnet(tmp_path / "bad")
    (folder / "data.adv").write_text("00000001 xx r | broken\n")
    with pytest.raises(ValueError, match="data.adv line 1"):
        read_wordnet(folder)


def test_fixed_class_lists_are_disjoint_and_name_real_domains() -> None:
    lists = fixed_class_lists()
    for labels in ("domain", "lexname"):
        splits = lists[labels]
        seen = [k for s in ("train", "val", "test") for k in splits[s]]
        assert len(seen) == len(set(seen)) and min(len(v) for v in splits.values()) >= 5
    real = set(read_wordnet().domain_keys.tolist())  # Debian's wordnet-base (make installs it)
    assert {k for v in lists["domain"].values() for k in v} == real


# ------------------------------------------------------------------ embeddings and tasks
def test_sentence_embeddings_match_sentence_transformers(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    embedder = TextEmbedder(cache=tmp_path)
    texts = ["a living organism", "the act of preparing food by heating it"]
    reference = SentenceTransformer(str(embedder.folder), device="cpu", local_files_only=True)
    expected = reference.encode(texts, convert_to_tensor=True).float()
    assert torch.allclose(embedder.sentences(texts), expected, atol=1e-5)


def test_disk_cache_is_reused_without_the_model(tmp_path: Path) -> None:
    texts = ["a living organism", "the act of preparing food"]
    first = TextEmbedder(cache=tmp_path).sentences(texts)
    second = TextEmbedder(cache=tmp_path)
    second._model = lambda: (_ for _ in ()).throw(AssertionError("model loaded"))  # type: ignore[method-assign]
    assert torch.equal(second.sentences(texts[::-1]), first.flip(0))
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        second.sentences(["fine", "  "])
    with pytest.raises(ValueError, match=r"texts\[0\] must be a string"):
        second.sentences([3])  # type: ignore[list-item]


def test_wordnet_tasks_are_class_disjoint_and_describe_their_classes(tiny: Path) -> None:
    tasks = tiny_tasks(tiny, describe=True)
    assert tasks.x.shape == (36, 384) and tasks.input_format == "text"
    assert set(tasks.classes["test"]).isdisjoint(tasks.classes["train"])
    episode = tasks.sample("test", 3, torch.Generator().manual_seed(0))
    assert episode.descriptor is not None and tuple(episode.descriptor.shape) == (3, 2, 384)
    # way w's description is the description of the class its examples come from
    test_rows = {c: tasks.x[tasks._rows[c]] for c in tasks.classes["test"]}
    for t in range(3):
        for w in range(2):
            source = [c for c, rows in test_rows.items()
                      if (rows == episode.support_x[t, w]).all(-1).any()]
            assert torch.equal(episode.descriptor[t, w], tasks.description_x[source[0]].float())
    assert torch.allclose(tasks.encode_text(["the judge's final decision"])[0],
                          tasks.x[(tasks.y == 2).nonzero()[1, 0]], atol=1e-6)


def test_wordnet_bad_options_are_named(tiny: Path) -> None:
    with pytest.raises(ValueError, match="zero-shot"):
        tiny_tasks(tiny, shots=0)
    with pytest.raises(ValueError, match="absent from the WordNet data"):
        tiny_tasks(tiny, class_lists={"train": ["nonsense.n.1"], "val": [], "test": []})


# -------------------------------------------------------------------- MiniLM LoRA target
@pytest.fixture(scope="module")
def lora_target() -> FunctionalTarget:
    top = MiniLMTop(first_layer=5, out_dim=3)
    return FunctionalTarget(top, generate=["layers.*.attention.self.query.weight",
                                           "layers.*.attention.self.value.weight"],
                            adapter="lowrank", rank=2).eval()


def random_params(target: FunctionalTarget, tasks: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {n: 0.05 * torch.randn(tasks, *s, generator=gen)
            for n, s in zip(target.spec.names, target.spec.shapes)}


def test_lora_target_batched_equals_per_task_and_merged(lora_target: FunctionalTarget) -> None:
    texts = ["a pan used for frying", "the judge's decision", "a game with a ball"]
    x = shared_embedder().hidden(texts, 5, 16).float()
    params = random_params(lora_target, 2)
    inputs = torch.stack([x, x.flip(0)])
    with torch.no_grad():
        batched = lora_target(params, inputs)
        for t in range(2):
            one = lora_target({k: v[t:t + 1] for k, v in params.items()}, inputs[t:t + 1])
            assert torch.allclose(batched[t], one[0], atol=1e-5)
            merged = lora_target.materialize({k: v[t] for k, v in params.items()})
            assert torch.allclose(merged(inputs[t]), batched[t], atol=1e-5)
    assert not any(p.requires_grad for p in lora_target.module.layers.parameters())


def test_gated_minilm_top_prunes_heads_units_and_layers(tmp_path: Path) -> None:
    from hypermeta.export_text import peft_adapter
    from hypermeta.networks import build_network

    top = MiniLMTop(first_layer=4, out_dim=3)
    target = FunctionalTarget(top, generate="layers.*.attention.self.query.weight",
                              adapter="lowrank", rank=2, gates=True).eval()
    sites = {s.module: s.units for s in top.gate_sites()}
    assert sites == {"layers.0.attention.output.dense.heads": 12, "layers.0.intermediate": 1536,
                     "layers.1.attention.output.dense.heads": 12, "layers.1.intermediate": 1536,
                     "skips.0": 1, "skips.1": 1}
    params = random_params(target, 2)
    params = {n: 60 * v if n.endswith(".gate") else v for n, v in params.items()}  # +-3 logits
    params["skips.0.gate"][0], params["skips.1.gate"][0] = -5.0, 5.0  # task 0: layer 0 closed
    params["skips.0.gate"][1], params["skips.1.gate"][1] = 5.0, 5.0
    x = shared_embedder().hidden(["a pan used for frying", "the judge's decision"], 4, 16).float()
    inputs = torch.stack([x, x.flip(0)])
    full = sum(p.numel() for p in top.parameters())
    with torch.no_grad():
        batched = target(params, inputs)
        for t, layers in ((0, [5]), (1, [4, 5])):
            one = {k: v[t] for k, v in params.items()}
            small = target.materialize(one)
            keep = small.config["keep"]
            assert keep["layers"] == layers
            heads = [int((one[f"layers.{i - 4}.attention.output.dense.heads.gate"] > 0).sum())
                     for i in layers]
            assert [len(h) for h in keep["heads"]] == heads and all(0 < h < 12 for h in heads)
            assert all(0 < len(f) < 1536 for f in keep["ff"])
            assert sum(p.numel() for p in small.parameters()) < full
            assert torch.allclose(small(inputs[t]), batched[t], atol=1e-5)
            rebuilt = build_network(json.loads(json.dumps(small.config)))  # from the folder
            rebuilt.load_state_dict(small.state_dict())
            assert torch.allclose(rebuilt.eval()(inputs[t]), batched[t], atol=1e-5)
            # the frozen pre-trained slices are MiniLM's own: equal without the state dict
            assert torch.equal(rebuilt.layers[-1].output.dense.weight,
                               small.layers[-1].output.dense.weight)
    with pytest.raises(ValueError, match="PEFT adapter cannot express"):
        peft_adapter(small, [n for n in target.spec.names if "lora" in n], one, rank=2)
    for bad, message in (({"layers": [3], "heads": [[0]], "ff": [[0]]}, "distinct layers"),
                         ({"layers": [4], "heads": [[]], "ff": [[0]]}, "at least one"),
                         ({"layers": [4], "heads": [[0, 12]], "ff": [[0]]}, "existing heads"),
                         ({"layers": [4]}, "exactly")):
        with pytest.raises(ValueError, match=message):
            MiniLMTop(first_layer=4, out_dim=3, keep=bad)


def test_minilm_top_at_zero_lora_is_minilm_itself() -> None:
    texts = ["a living organism characterized by voluntary movement", "to boil pasta"]
    embedder = shared_embedder()
    top = MiniLMTop(first_layer=4, out_dim=384).eval()
    with torch.no_grad():
        top.head.weight.copy_(torch.eye(384))
        top.head.bias.zero_()
        out = top(embedder.hidden(texts, 4, 32).float())
    assert torch.allclose(out, embedder.sentences(texts), atol=2e-4)  # float16 cache


# ----------------------------------------------------------------------------- zero-shot
def described_model() -> HyperModel:
    net = nn.Sequential(nn.Linear(384, 64), nn.ReLU(), nn.Linear(64, 5))
    target = FunctionalTarget(net, generate="none", class_head="2")
    return HyperModel(None, None, target, kind="classification",
                      class_head=ClassHead(64, 32, descriptions=True))


def test_zero_shot_head_starts_as_description_prototypes() -> None:
    head = ClassHead(8, 4, descriptions=True)
    described = torch.randn(2, 3, 8)
    queries = torch.randn(2, 5, 8)
    weight, bias = head(torch.zeros(2, 0, 8), torch.zeros(2, 0, dtype=torch.long), 3,
                        described=described)
    logits = queries @ weight.transpose(1, 2) + bias[:, None]
    expected = -torch.cdist(queries, described) ** 2 + (queries ** 2).sum(-1, keepdim=True)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_zero_shot_gradients_reach_head_and_trunk() -> None:
    model = described_model()
    episode = Episode(torch.zeros(2, 0, 384), torch.zeros(2, 0, dtype=torch.long),
                      torch.randn(2, 6, 384), torch.randint(0, 3, (2, 6)),
                      descriptor=torch.randn(2, 3, 384))
    out = model.outputs(episode)
    assert out.pred.shape == (2, 6, 3)
    torch.nn.functional.cross_entropy(out.pred.flatten(0, 1), episode.query_y.flatten()).backward()
    head = model.class_head
    assert head is not None and head.log_beta.grad is not None
    assert head.correction[0].weight.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.target.named_parameters() if n.endswith("0.weight"))


def test_description_episodes_are_checked() -> None:
    model = described_model()
    no_desc = Episode(torch.randn(1, 2, 384), torch.tensor([[0, 1]]), torch.randn(1, 3, 384))
    with pytest.raises(ValueError, match="one encoded description per class"):
        model.predict(no_desc)
    beyond = Episode(torch.randn(1, 2, 384), torch.tensor([[0, 2]]), torch.randn(1, 3, 384),
                     descriptor=torch.randn(1, 2, 384))
    with pytest.raises(ValueError, match=r"0\.\.1 \(one per described class\)"):
        model.predict(beyond)  # class 2 has neither a description nor a place
    mixed = Episode(torch.randn(1, 2, 384), torch.tensor([[0, 0]]), torch.randn(1, 3, 384),
                    descriptor=torch.randn(1, 3, 384))
    assert model.predict(mixed).shape == (1, 3, 3)  # classes 1, 2: description only


# ---------------------------------------------------------------- runs, export and serving
def train_tiny(tmp_path: Path, tiny: Path, model: dict[str, object] | None = None,
               **task: object) -> Path:
    lists = {"train": ["physics.n.00001000", "cooking.n.00001700"],
             "val": ["law.n.00002400", "music.n.00003100"], "test": LISTS["test"]}
    config = RunConfig.from_dict({
        "method": "hypernet", "seed": 0,
        "tasks": {"name": "wordnet", "wordnet_dir": str(tiny), "ways": 2, "shots": 1,
                  "queries": 2, "class_lists": lists, **task},
        "target": {"name": "mlp", "in_dim": 384, "out_dim": 2, "hidden": []},
        "generate": "none",
        "class_head": {"enabled": True, "module": "0", "hidden": 16,
                       "descriptions": bool(task.get("describe"))},
        "train": {"steps": 3, "meta_batch": 2, "val_every": 3, "val_tasks": 4},
        **(model or {})})
    run_dir = tmp_path / "run"
    fit(config, run_dir)
    return run_dir


def export_and_reload(run: Any, network: nn.Module, support: Episode, texts: list[str],
                      folder: Path, onnx: bool) -> tuple[Path, dict[str, torch.Tensor],
                                                         torch.Tensor]:
    """Export ``network`` as a raw-text classifier, reload it, and check that it classifies
    ``texts`` as the run's model does; -> (folder, tokens, expected logits)."""
    from hypermeta.export_text import export_text_classifier, load_text_classifier, tokenize

    folder = export_text_classifier(network, run.tasks, folder, onnx=onnx,
                                    content_id=run.content_id)
    query = Episode(support.support_x, support.support_y, run.tasks.encode_text(texts)[None])
    expected = run.hypermodel.predict(query)[0]
    tokens = tokenize(folder, texts)
    with torch.no_grad():
        rebuilt = load_text_classifier(folder)(tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(rebuilt, expected, atol=1e-4)
    return folder, tokens, expected


def test_text_classifier_exports_with_its_tokenizer(tiny: Path, tmp_path: Path) -> None:
    import onnxruntime

    from hypermeta import load_run

    run = load_run(train_tiny(tmp_path, tiny))
    texts = ["a spoon for stirring soup", "the crime of stealing property", "a new text"]
    support = run.tasks.support_episode(run.tasks.encode_text(texts[:2]), torch.tensor([0, 1]))
    network = run.hypermodel.generate(support)[0]
    folder, tokens, expected = export_and_reload(run, network, support, texts,
                                                 tmp_path / "export", onnx=True)
    assert {"tokenizer.json", "vocab.txt", "model.onnx", "config.json"} <= {
        p.name for p in folder.iterdir()}
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    onnx_out = session.run(None, {k: v.numpy() for k, v in tokens.items()})[0]
    assert np.allclose(onnx_out, expected.numpy(), atol=1e-4)


def test_gated_minilm_text_task_trains_and_exports_its_pruned_network(tiny: Path,
                                                                     tmp_path: Path) -> None:
    from hypermeta import load_run

    model = {"target": {"name": "minilm_top", "first_layer": 5, "out_dim": 2},
             "class_head": {"enabled": True, "module": "head", "hidden": 16},
             "encoder": {"kind": "set", "dim": 16, "hidden": 32, "pooling": "mean",
                         "x_encoder": "mean_tokens"},
             "gates": {"enabled": True, "sparsity": 0.01}}
    run = load_run(train_tiny(tmp_path, tiny, model, inputs="tokens", layer=5, max_length=16))
    texts = ["a spoon for stirring soup", "the crime of stealing property", "a new text"]
    support = run.tasks.support_episode(run.tasks.encode_text(texts[:2]), torch.tensor([0, 1]))
    network = run.hypermodel.generate(support)[0]
    assert isinstance(network, MiniLMTop) and network.config["keep"]["layers"] == [5]
    # close half of the feed-forward units for every task: the exported network is smaller
    spec = run.hypermodel.target.spec
    start = int(torch.tensor([0, *[s.numel() for s in spec.shapes]]).cumsum(0)[
        list(spec.names).index("layers.0.intermediate.gate")])
    with torch.no_grad():
        run.hypermodel.hypernet.head.bias[start:start + 768] = -20.0
    network = run.hypermodel.generate(support)[0]
    assert len(network.config["keep"]["ff"][0]) <= 768
    export_and_reload(run, network, support, texts, tmp_path / "export", onnx=False)


def test_generated_lora_loads_in_peft_with_equal_outputs(lora_target: FunctionalTarget,
                                                         tmp_path: Path) -> None:
    import safetensors.torch
    import transformers
    from peft import PeftModel

    from hypermeta.export_text import peft_adapter, tokenize
    from hypermeta.files import atomic_write_bytes, atomic_write_json

    one = {k: v[0] for k, v in random_params(lora_target, 1).items()}
    merged = lora_target.materialize(one)
    assert isinstance(merged, MiniLMTop)
    config, tensors = peft_adapter(merged, list(lora_target.spec.names), one, rank=2)
    atomic_write_json(tmp_path / "adapter" / "adapter_config.json", config)
    atomic_write_bytes(tmp_path / "adapter" / "adapter_model.safetensors",
                       safetensors.torch.save(tensors))
    embedder = shared_embedder()
    base = transformers.AutoModel.from_pretrained(str(embedder.folder), local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    texts = ["a pan used for frying eggs", "the referee's signal to stop play"]
    tokens = tokenize(embedder.folder, texts)
    with torch.no_grad():
        states = peft_model(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].float()
        pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
        expected = merged.head(pooled)
        ours = merged(embedder.hidden(texts, 5, 32).float())
    assert torch.allclose(ours, expected, atol=2e-3)  # the cached states are float16


def test_server_registers_text_tasks_from_descriptions_alone(tiny: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from hypermeta.serve import create_app

    run_dir = train_tiny(tmp_path, tiny, describe=True)
    client = TestClient(create_app(run_dir, state_dir=tmp_path / "state"))
    descriptions = ["sport: games and athletic contests", "botany: the study of plants"]
    made = client.post("/v1/tasks", json={"descriptions": descriptions})
    assert made.status_code == 201, made.text
    task = made.json()["task_id"]
    answer = client.post(f"/v1/tasks/{task}/predict",
                         json={"x": ["a match between two teams", "the leaf of a fern"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["predictions"] == [0, 1]  # generated from the two descriptions alone
    assert np.allclose(
        [sum(p) for p in body["probabilities"]], 1.0, atol=1e-5)
    mixed = client.post("/v1/tasks", json={"descriptions": descriptions, "support": {
        "x": ["to run a long race"], "y": [0]}})
    assert mixed.status_code == 201, mixed.text
    for bad, where in (({"support": {"x": ["a text"], "y": [0]}}, "descriptions"),
                       ({"descriptions": ["fine", "   "]}, "descriptions"),
                       ({"descriptions": ["fine", 3]}, "descriptions"),
                       ({"descriptions": ["one class"], "support": {"x": ["t"], "y": [1]}},
                        "support")):
        answer = client.post("/v1/tasks", json=bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert where in json.dumps(answer.json()["detail"]), answer.text


def test_cli_exports_a_text_task_from_a_json_support_file(tiny: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hypermeta.cli import app

    run_dir = train_tiny(tmp_path, tiny)
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"x": ["a spoon for stirring soup", "the judge's decision"],
                                "y": [0, 1]}))
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--format",
                                      "text", "--support", str(task)])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    task.write_text(json.dumps({"x": ["a spoon", ""], "y": [0, 1]}))
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "no"),
                                      "--format", "text", "--support", str(task)])
    assert result.exit_code != 0 and "x[1] is empty" in result.output
    assert not (tmp_path / "no").exists()
