import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import hypermeta

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("descriptor", ["support", "features"])
def test_linear_example_is_within_20_percent_of_least_squares(descriptor):
    result = load_example("linear_tasks").run(descriptor)
    assert 0.0095 < result["lstsq_mse"] < 0.016  # the noise floor is 0.01
    assert result["ratio"] <= 1.2, result


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "hypermeta", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"hypermeta {hypermeta.__version__}"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hypermeta", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_train_eval_generate_end_to_end(tmp_path):
    import json

    import numpy as np
    from safetensors import safe_open

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "method: hypernet\ntasks: {name: sinusoid, shots: 5}\n"
        "target: {name: mlp, in_dim: 1, out_dim: 1, hidden: [8]}\n"
        "encoder: {kind: set, dim: 8, hidden: 16}\nhypernet: {hidden: [16]}\n"
        "train: {steps: 6, meta_batch: 4, val_every: 3, val_tasks: 10}\n")
    run = tmp_path / "run"
    out = run_cli("train", str(config), "--out", str(run), "--set", "train.steps=8",
                  "--no-progress")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["steps_done"] == 8
    assert {"config.json", "best.safetensors", "last.safetensors", "metrics.jsonl"} <= {
        p.name for p in run.iterdir()}
    out = run_cli("eval", str(run), "--tasks", "20")
    assert out.returncode == 0 and out.stdout.startswith("mse "), out.stderr
    assert json.loads((run / "eval-test-best.json").read_text())["result"]["tasks"] == 20
    out = run_cli("eval", str(run), "--tasks", "20", "--finetune-steps", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("generated mse ") and "finetuned mse " in out.stdout
    report = json.loads((run / "eval-test-best-ft3.json").read_text())
    assert report["finetune_steps"] == 3 and report["finetuned"]["tasks"] == 20
    np.savez(tmp_path / "support.npz", x=np.linspace(-4, 4, 5)[:, None],
             y=np.sin(np.linspace(-4, 4, 5)))
    out = run_cli("generate", str(run), "--support", str(tmp_path / "support.npz"), "--out",
                  str(tmp_path / "task.safetensors"))
    assert out.returncode == 0, out.stderr
    with safe_open(str(tmp_path / "task.safetensors"), "pt") as handle:
        meta = json.loads(handle.metadata()["hypermeta"])
        assert meta["architecture"]["hidden"] == [8] and meta["content_id"]
        assert set(handle.keys()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("args, message", [
    (["eval", "/nonexistent/run"], "does not exist"),
    (["train", "/nonexistent.yaml"], "does not exist"),
    (["generate", "/nonexistent/run", "--out", "x.safetensors"], "exactly one of"),
])
def test_cli_bad_input_is_one_line_and_nonzero(args, message):
    out = run_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_every_command_has_help():
    for command in ("train", "eval", "generate", "networks"):
        out = run_cli(command, "--help")
        assert out.returncode == 0 and "Usage" in out.stdout


def test_cli_export_network_and_generator(tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "method: hypernet\ntasks: {name: sinusoid, shots: 5}\n"
        "target: {name: mlp, in_dim: 1, out_dim: 1, hidden: [8]}\n"
        "encoder: {kind: set, dim: 8, hidden: 16}\nhypernet: {hidden: [16]}\n"
        "train: {steps: 2, meta_batch: 4, val_every: 2, val_tasks: 5}\n")
    run = tmp_path / "run"
    assert run_cli("train", str(config), "--out", str(run), "--no-progress").returncode == 0
    np.savez(tmp_path / "s.npz", x=np.linspace(-4, 4, 5)[:, None], y=np.sin(np.linspace(-4, 4, 5)))
    for fmt in ("onnx", "pt2"):
        out = run_cli("export", str(run), "--support", str(tmp_path / "s.npz"), "--format", fmt,
                      "--out", str(tmp_path / f"task.{fmt}"))
        assert out.returncode == 0, out.stderr
    x = np.linspace(-5, 5, 11, dtype=np.float32)[:, None]
    session = ort.InferenceSession(str(tmp_path / "task.onnx"))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    pt2_out = torch.export.load(str(tmp_path / "task.pt2")).module()(torch.from_numpy(x))
    np.testing.assert_allclose(onnx_out, pt2_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    out = run_cli("export", str(run), "--hypernet", "--out", str(tmp_path / "gen.onnx"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "gen.json").exists()
    out = run_cli("export", str(run), "--hypernet", "--format", "pt2", "--out", "x.pt2")
    assert out.returncode == 2 and "ONNX only" in out.stderr
