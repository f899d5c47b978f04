"""Training on CUDA takes the steps training on the CPU takes (same seed, same tasks), its
checkpoints load anywhere, and a learner on the GPU evaluates there. These need a CUDA device,
so CI (CPU only) skips them; they run on a GPU machine with ``pytest tests/test_device.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hypermeta import RunConfig, fit
from hypermeta.evaluate import evaluate
from hypermeta.runs import load_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["train.steps=4", "train.meta_batch=4", "train.val_every=2", "train.val_tasks=8",
        "train.log_every=1"]
OMNIGLOT = ["tasks.ways=5", "tasks.shots=1", "tasks.queries=2"]


def _params(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run / "last.safetensors")).items()
            if not k.startswith(("rng/", "optim", "extra/"))}


CASES = [("sinusoid_hypernet.yaml", []), ("sinusoid_fomaml.yaml", []),
         ("sinusoid_maml.yaml", [])]
if os.environ.get("HYPERMETA_DATA"):
    CASES += [("omniglot_hypernet_film.yaml", OMNIGLOT), ("omniglot_protonet.yaml", OMNIGLOT)]


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


@pytest.mark.parametrize(("config", "extra"), CASES)
def test_cuda_training_takes_the_cpu_steps(config: str, extra: list[str],
                                           tmp_path: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = RunConfig.from_file(CONFIGS / config, [*TINY, *extra, f"device={device}"])
        fit(cfg, tmp_path / device)
        runs[device] = _params(tmp_path / device)
    # the same tasks through the same initial network: the same first loss
    cpu, cuda = _losses(tmp_path / "cpu"), _losses(tmp_path / "cuda")
    assert len(cpu) == len(cuda) == 4
    assert cuda[0] == pytest.approx(cpu[0], rel=1e-4)
    # later steps drift only by float rounding (BatchNorm over 1-shot batches and Adam's
    # normalised steps amplify it in the conv nets, so the parameters are compared on the
    # MLPs alone)
    assert cuda == pytest.approx(cpu, rel=5e-2)
    assert runs["cpu"].keys() == runs["cuda"].keys()
    for name, value in runs["cpu"].items():
        assert runs["cuda"][name].device.type == "cpu"  # checkpoints hold CPU tensors
        if config.startswith("sinusoid"):
            assert torch.allclose(value.float(), runs["cuda"][name].float(), atol=1e-4), name
    # the CUDA run loads on the CPU, and evaluates on the GPU when moved there
    run = load_run(tmp_path / "cuda", which="last")
    episodes = run.tasks.fixed_tasks("val", 8)
    on_cpu = evaluate(run.learner, episodes, run.tasks.kind)
    on_gpu = evaluate(run.learner.to("cuda"), episodes, run.tasks.kind)
    assert abs(on_cpu["mean"] - on_gpu["mean"]) < 1e-2 * max(1.0, abs(on_cpu["mean"]))


def test_fast_inference_on_cuda_equals_predict() -> None:
    config = RunConfig.from_file(CONFIGS / "sinusoid_hypernet.yaml", ["device=cuda"])
    from hypermeta.runs import build_learner, build_tasks

    tasks = build_tasks(config)
    model = build_learner(config, tasks).to("cuda").eval()
    episode = tasks.fixed_tasks("test", 8).to("cuda")
    fast = model.prepare_inference()
    assert fast.lean
    assert torch.allclose(fast(episode), model.predict(episode), atol=1e-4, rtol=1e-4)
    cpu_episode = tasks.fixed_tasks("test", 8)  # CPU tensors: the full validation moves them
    assert torch.allclose(fast(cpu_episode), model.predict(cpu_episode), atol=1e-4, rtol=1e-4)
