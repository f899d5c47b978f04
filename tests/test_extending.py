"""Extending hypermeta from outside the package, as docs/extending.md describes: a toy ranking
kind with integer item-id inputs, its task family, a toy target and a toy hypernetwork, all
registered here, then trained through the public ``fit`` from a YAML config that names them,
loaded, and served over HTTP."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hypermeta
from hypermeta import (
    HYPERNETS,
    TARGETS,
    TASK_FAMILIES,
    TASK_KINDS,
    BuildContext,
    Episode,
    ParamSpec,
    TaskKind,
    TaskSource,
)


# ------------------------------------------------------------------------- a new task kind
class Ranking(TaskKind):
    """Scores over items: listwise softmax cross-entropy against the relevance labels; the
    metric is whether the top-scored query item is relevant (higher is better)."""

    name = "toy_ranking"
    metric = "hit@1"
    higher_is_better = True

    def per_task_loss(self, pred: Tensor, target: Tensor) -> Tensor:  # [T, Q] scores/labels
        weights = target / target.sum(1, keepdim=True).clamp_min(1e-6)
        return -(weights * F.log_softmax(pred, dim=1)).sum(1)

    def per_task_metric(self, pred: Tensor, target: Tensor) -> Tensor:
        return target.gather(1, pred.argmax(1, keepdim=True)).squeeze(1).clamp(0, 1)

    def labels(self, y: Tensor, out_dim: int) -> Tensor:
        return y.float()  # one relevance per item: [S], no trailing dim

    def empty_labels(self, num_tasks: int, out_dim: int) -> Tensor:
        return torch.zeros(num_tasks, 0)

    def to_json(self, pred: Tensor) -> dict[str, object]:
        return {"scores": pred.tolist(), "ranking": pred.argsort(descending=True).tolist()}


# ------------------------------------------------------------------- its task family
class ToyUsers(TaskSource):
    """Each task is a user who likes one genre (5 of 20 items); inputs are item ids."""

    name = "toy_users"
    kind = Ranking()
    x_shape = (1,)
    x_dtype = torch.long
    input_format = "integers"
    vocab_size = 20
    out_dim = 1

    def __init__(self, shots: int = 6, queries: int = 8) -> None:
        self.shots, self.queries = shots, queries

    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode:
        genre = torch.randint(0, 4, (num_tasks, 1), generator=generator)
        items = torch.stack([torch.randperm(20, generator=generator)[: self.shots + self.queries]
                             for _ in range(num_tasks)])  # (T, S + Q) distinct ids
        liked = (items // 5 == genre).float()
        x, y = items[..., None], liked
        return Episode(x[:, : self.shots], y[:, : self.shots], x[:, self.shots:],
                       y[:, self.shots:])


# ------------------------------------------------------------ a target and a hypernetwork
class ItemScorer(nn.Module):
    """Shared item embeddings; the per-user vector ``user`` is what gets generated."""

    def __init__(self, num_items: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items, dim)
        self.user = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:  # (N, 1) ids -> (N,) scores
        return self.items(x[:, 0]) @ self.user


class LinearGenerator(nn.Module):
    """The smallest generator: one linear map from the task embedding to every tensor."""

    def __init__(self, spec: ParamSpec, z_dim: int) -> None:
        super().__init__()
        self.spec, self.z_dim = spec, z_dim
        self.head = nn.Linear(z_dim, spec.numel())

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        return self.spec.unflatten(self.head(z))


def build_linear_generator(ctx: BuildContext, /, *, scale: float = 1.0) -> LinearGenerator:
    generator = LinearGenerator(ctx.spec, ctx.z_dim)
    with torch.no_grad():
        generator.head.weight.mul_(scale)
    return generator


@pytest.fixture
def registered(monkeypatch):
    """Register the toys (into copies of the tables, so other tests never see them)."""
    for table in (TASK_KINDS, TASK_FAMILIES, TARGETS, HYPERNETS):
        monkeypatch.setattr(table, "_entries", dict(table._entries))
    TASK_KINDS.register("toy_ranking", ToyUsers.kind)
    TASK_FAMILIES.register("toy_users", ToyUsers)
    TARGETS.register("toy_scorer", ItemScorer)
    HYPERNETS.register("toy_linear", build_linear_generator)


CONFIG = """
method: hypernet
seed: 0
tasks: {name: toy_users, shots: 6, queries: 8}
target: {name: toy_scorer, num_items: 20, dim: 8}
generate: user
encoder: {kind: set, dim: 16, hidden: 32, x_encoder: embedding, embedding_dim: 8}
hypernet: {kind: toy_linear, scale: 0.5}
train: {steps: 400, meta_batch: 16, lr: 0.003, schedule: constant, val_every: 100, val_tasks: 100}
eval: {tasks: 200}
"""


def test_toy_ranking_domain_trains_from_yaml_and_serves(registered, tmp_path):
    from fastapi.testclient import TestClient

    from hypermeta.serve import create_app

    path = tmp_path / "toy.yaml"
    path.write_text(CONFIG)
    config = hypermeta.RunConfig.from_file(path)
    with pytest.raises(hypermeta.ConfigError, match="hypernet.scael: Extra inputs"):
        hypermeta.RunConfig.from_file(path, ["hypernet.scael=2"])  # typed by its signature
    result = hypermeta.fit(config, tmp_path / "run")
    assert result.complete and result.steps_done == 400
    run = hypermeta.load_run(tmp_path / "run")
    assert isinstance(run.learner.hypernet, LinearGenerator)
    assert run.tasks.kind.name == "toy_ranking"
    test = run.tasks.fixed_tasks("test", 200)
    trained = hypermeta.evaluate(run.learner, test, run.tasks.kind)["mean"]
    # chance: the top item of 8 is liked with probability ~ 1/4 (plus variance)
    assert trained > 0.5, trained

    with TestClient(create_app(tmp_path / "run", state_dir=tmp_path / "state")) as api:
        support = {"x": [[0], [1], [7], [12], [13], [19]], "y": [1, 1, 0, 0, 0, 0]}
        reply = api.post("/v1/predict", json={"support": support, "x": [[2], [9], [15]]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["ranking"][0] == 0 and len(body["scores"]) == 3  # item 2 shares the genre
        # the OpenAPI schema says it: ids are integers below the family's vocabulary size
        for bad, message in (([[25]], "less than or equal to 19"),
                             ([[1.5]], "Input should be a valid integer"),
                             ([["3"]], "Input should be a valid integer")):
            reply = api.post("/v1/predict", json={"support": support, "x": bad})
            assert reply.status_code == 422 and message in reply.text, reply.text


def test_entry_points_register_from_an_installed_package(tmp_path):
    site = tmp_path / "site"
    (site / "toyplugin-0.1.dist-info").mkdir(parents=True)
    (site / "toyplugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toyplugin\nVersion: 0.1\n")
    (site / "toyplugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[hypermeta.targets]\ntoy_tiny = toyplugin_net:Tiny\n")
    (site / "toyplugin_net.py").write_text(textwrap.dedent("""
        from torch import nn
        class Tiny(nn.Linear):
            def __init__(self, width: int = 3):
                super().__init__(width, 1)
    """))
    code = ("import hypermeta; from hypermeta import build_network; "
            "print(type(build_network({'name': 'toy_tiny', 'width': 4})).__name__, "
            "'toy_tiny' in hypermeta.TARGETS.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.split() == ["Tiny", "True"], out.stderr[-2000:]
