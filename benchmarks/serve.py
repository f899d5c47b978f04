"""Bounded load test of `hypermeta serve` on loopback: requests/s and p50/p99 latency of predict
and of task registration, error count, with one worker process and then with `--workers 2`
(`rps_workers2`; clients and server share the machine's cores); plus the in-process
generation latency.

    python benchmarks/serve.py                 # 30 s, 4 clients -> results/serve-cpu.json
    python benchmarks/serve.py --smoke         # 5 s -> results/serve-cpu-smoke.json

Serves benchmarks/runs/sinusoid/hypernet-k10-s0 (made by benchmarks/sinusoid.py) when present,
else trains a small sinusoid hypernet first. Every client loops: one registration (a K=10
support set), then 9 predictions of 100 points on its task. Traffic stays on 127.0.0.1 and stops
by itself after --seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, result_path, write_result  # noqa: E402

from hypermeta import RunConfig, fit, get_tasks, load_run  # noqa: E402


def run_to_serve(tmp: Path) -> Path:
    headline = ROOT / "benchmarks" / "runs" / "sinusoid" / "hypernet-k10-s0"
    if (headline / "best.safetensors").exists():
        return headline
    config = RunConfig.from_file(ROOT / "configs" / "sinusoid_hypernet.yaml",
                                 ["train.steps=300", "train.val_every=300"])
    fit(config, tmp / "run")
    return tmp / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q)) if values else float("nan")


def load_test(run_dir: Path, tmp: Path, tasks: Any, *, workers: int, seconds: float,
              clients: int) -> tuple[dict[str, list[float]], list[str], float]:
    """Run ``hypermeta serve --workers N`` and hammer it from ``clients`` threads for
    ``seconds``: latencies per route, errors, elapsed seconds."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hypermeta", "serve", str(run_dir), "--port", str(port),
         "--state-dir", str(tmp / f"state-{workers}"), "--workers", str(workers)],
        env={k: v for k, v in os.environ.items() if k != "HYPERMETA_TOKEN"})
    base = f"http://127.0.0.1:{port}"
    latencies: dict[str, list[float]] = {"register": [], "predict": []}
    errors: list[str] = []
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        lock = threading.Lock()
        stop_at = time.time() + seconds

        def client(index: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                n = index
                while time.time() < stop_at:
                    i = n % tasks.num_tasks
                    n += clients
                    support = {"x": tasks.support_x[i].tolist(),
                               "y": tasks.support_y[i, :, 0].tolist()}
                    start = time.perf_counter()
                    reply = http.post("/v1/tasks", json={"support": support})
                    took = time.perf_counter() - start
                    if reply.status_code != 201:
                        with lock:
                            errors.append(f"register {reply.status_code}")
                        continue
                    task = reply.json()["task_id"]
                    with lock:
                        latencies["register"].append(took)
                    body = {"x": tasks.query_x[i].tolist()}
                    for _ in range(9):
                        start = time.perf_counter()
                        reply = http.post(f"/v1/tasks/{task}/predict", json=body)
                        took = time.perf_counter() - start
                        with lock:
                            if reply.status_code == 200:
                                latencies["predict"].append(took)
                            else:
                                errors.append(f"predict {reply.status_code}")

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    return latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.seconds = 5.0
    env = environment([0])
    tmp = Path(tempfile.mkdtemp(prefix="hypermeta-serve-"))
    run_dir = run_to_serve(tmp)
    tasks = get_tasks("sinusoid", shots=10).fixed_tasks("test", 200)
    latencies, errors, elapsed = load_test(run_dir, tmp, tasks, workers=1,
                                           seconds=args.seconds, clients=args.clients)
    latencies2, errors2, elapsed2 = load_test(run_dir, tmp, tasks, workers=2,
                                              seconds=args.seconds, clients=args.clients)
    # in-process generation latency: support set -> generated (fine-tuned if configured) params
    # (the server generates through the fast path, model.prepare_inference().params; both
    # timed here, interleaved)
    model = load_run(run_dir).learner
    fast = model.prepare_inference()
    one = tasks.task(0)
    samples: dict[str, list[float]] = {"model": [], "fast": []}
    for _ in range(220):
        for name, generate in (("model", model.adapted_params), ("fast", fast.params)):
            start = time.perf_counter()
            generate(one)
            samples[name].append(time.perf_counter() - start)
    generation_ms = 1000 * statistics.median(samples["model"][20:])
    generation_fast_ms = 1000 * statistics.median(samples["fast"][20:])
    total = len(latencies["register"]) + len(latencies["predict"])
    summary = {"rps": total / elapsed, "p50_ms": percentile(latencies["predict"], 50),
               "p99_ms": percentile(latencies["predict"], 99), "errors": len(errors),
               "register_p50_ms": percentile(latencies["register"], 50),
               "register_p99_ms": percentile(latencies["register"], 99),
               "generation_ms": generation_ms, "generation_fast_ms": generation_fast_ms,
               "rps_workers2": (len(latencies2["register"]) + len(latencies2["predict"]))
               / elapsed2, "errors_workers2": len(errors2),
               "p50_ms_workers2": percentile(latencies2["predict"], 50),
               "p99_ms_workers2": percentile(latencies2["predict"], 99)}
    payload: dict[str, Any] = {
        "benchmark": "serve", "complete": True, "summary": summary, "config": vars(args),
        "served_run": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else "tmp",
        "requests": {k: len(v) for k, v in latencies.items()}, "elapsed_s": elapsed,
        "error_samples": errors[:20], "environment": env}
    path = write_result(result_path("serve", "cpu", smoke=args.smoke), payload)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
