"""Data-parallel meta-training under torchrun (gloo, CPU): 2 ranks x B/2 tasks take the same
steps as 1 process x B, a 2-rank run stopped mid-way resumes exactly, and bad setups are
refused before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hypermeta import RunConfig, fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["train.steps=6", "train.meta_batch=4", "train.val_every=3", "train.val_tasks=10"]


def torchrun(config: str, out: Path, *extra: str, ranks: int = 2) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(ranks), "-m", "hypermeta", "train", str(CONFIGS / config),
            "--out", str(out), "--no-progress"]
    for item in (*TINY, *extra):
        args += ["--set", item] if "=" in item else [item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    timeout = int(os.environ.get("TORCHRUN_TIMEOUT", "180"))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run / "last.safetensors")).items()
            if not k.startswith(("rng/", "optim"))}


def assert_same(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert torch.allclose(wa[name].float(), wb[name].float(), atol=1e-5), name


@pytest.mark.parametrize("config", ["sinusoid_hypernet.yaml", "sinusoid_fomaml.yaml"])
def test_two_ranks_take_the_steps_of_one_process(config: str, tmp_path: Path) -> None:
    fit(RunConfig.from_file(CONFIGS / config, TINY), tmp_path / "one")
    done = torchrun(config, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"steps_done": 6') == 1  # one report, from rank 0
    assert_same(tmp_path / "one", tmp_path / "two")
    # validation split over the ranks and gathered: the same numbers
    one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    vals = [[line for line in lines if '"val"' in line] for lines in (one, two)]
    assert len(vals[0]) == len(vals[1]) == 2
    for a, b in zip(*vals):
        assert abs(float(a.split('"val": ')[1].split(",")[0])
                   - float(b.split('"val": ')[1].split(",")[0])) < 1e-4


def test_a_stopped_two_rank_run_resumes_exactly_and_only_with_two(tmp_path: Path) -> None:
    whole = torchrun("sinusoid_hypernet.yaml", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = torchrun("sinusoid_hypernet.yaml", tmp_path / "part", "--max-steps", "3")
    assert part.returncode == 0, part.stderr[-2000:]
    with pytest.raises(Exception, match="trained by 2 process"):
        fit(RunConfig.from_file(CONFIGS / "sinusoid_hypernet.yaml", TINY), tmp_path / "part")
    rest = torchrun("sinusoid_hypernet.yaml", tmp_path / "part")
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert_same(tmp_path / "whole", tmp_path / "part")


def test_a_meta_batch_the_ranks_cannot_share_is_refused_before_any_work(tmp_path: Path) -> None:
    done = torchrun("sinusoid_hypernet.yaml", tmp_path / "odd", "train.meta_batch=5")
    assert done.returncode != 0
    assert "does not divide among 2 processes" in done.stdout + done.stderr
    assert not (tmp_path / "odd").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(run: Path, state: Path | str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    where = ["--store-url", state] if isinstance(state, str) else ["--state-dir", str(state)]
    server = subprocess.Popen([sys.executable, "-m", "hypermeta", "serve", str(run), "--port",
                               str(port), *extra, *where],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    return server, f"http://127.0.0.1:{port}"


def _call(base: str, path: str, body: dict | None = None) -> tuple[int, dict, str]:
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), answer.headers["x-hypermeta-worker"]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers["x-hypermeta-worker"]


def _wait_ready(base: str, server: subprocess.Popen) -> None:
    import time

    for _ in range(240):
        assert server.poll() is None, server.stderr.read().decode()[-2000:]  # type: ignore
        try:
            if _call(base, "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.25)
    raise AssertionError("server did not start")


SUPPORT = {"x": [[0.1], [0.5], [-1.0]], "y": [[0.2], [0.4], [-0.3]]}


def test_a_task_registered_by_one_server_process_is_served_by_another(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(RunConfig.from_file(CONFIGS / "sinusoid_hypernet.yaml", TINY), run)
    first, a = _serve(run, tmp_path / "s")
    # the same task store, named by URL; its own cache
    second, b = _serve(run, f"sqlite:///{tmp_path / 's' / 'tasks.sqlite3'}")
    try:
        _wait_ready(a, first)
        _wait_ready(b, second)
        status, made, registrar = _call(a, "/v1/tasks", {"support": SUPPORT})
        assert status == 201, made
        path = f"/v1/tasks/{made['task_id']}/predict"
        here, there = _call(a, path, {"x": [[0.3]]}), _call(b, path, {"x": [[0.3]]})
        assert here[0] == there[0] == 200, (here, there)
        assert there[2] != registrar  # another process answered
        assert there[1] == here[1]  # with the same generated network
        assert _call(b, "/v1/tasks/nope/predict", {"x": [[0.3]]})[0] == 404
    finally:
        for server in (first, second):
            server.terminate()
            server.wait(timeout=30)


def test_serve_workers_start_that_many_processes_on_one_port(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(RunConfig.from_file(CONFIGS / "sinusoid_hypernet.yaml", TINY), run)
    server, base = _serve(run, tmp_path / "s", "--workers", "2")
    try:
        _wait_ready(base, server)
        status, made, worker = _call(base, "/v1/tasks", {"support": SUPPORT})
        assert status == 201, made
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert worker in children and len(children) >= 2
        answer = _call(base, f"/v1/tasks/{made['task_id']}/predict", {"x": [[0.3]]})
        assert answer[0] == 200 and answer[2] in children
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_store_urls_name_a_sqlite_file_and_anything_else_is_refused(tmp_path: Path) -> None:
    from hypermeta.serve.service import store_path

    assert store_path("sqlite:///tasks.db") == Path("tasks.db")
    assert store_path("sqlite:////srv/state/tasks.db") == Path("/srv/state/tasks.db")
    with pytest.raises(ValueError, match="PostgreSQL store .* future work"):
        store_path("postgresql://db.example/tasks")
    for bad in ("tasks.db", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="sqlite:///"):
            store_path(bad)
