"""What every benchmark records beside its numbers, and where it writes them."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hypermeta import __version__, atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
    # result files are rewritten by resumable runs themselves: they do not make the code dirty
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 ":(exclude)benchmarks/results")
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty": bool(status.strip())}


def environment(seeds: list[int]) -> dict[str, Any]:
    """Machine, threads, load, versions, seeds and code state of this run."""
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
        "hypermeta": __version__,
        "seeds": seeds,
        "code": git_state(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def result_path(benchmark: str, config: str, *, smoke: bool) -> Path:
    """One file per benchmark and config; a smoke run gets its own name, never the headline's."""
    return RESULTS / f"{benchmark}-{config}{'-smoke' if smoke else ''}.json"


def write_result(path: Path, payload: dict[str, Any]) -> Path:
    return atomic_write_json(path, payload)


def parse_args(parser: Any) -> Any:
    """Add the options every resumable benchmark takes (work budget per call, latency
    repeats, torch threads, ``--smoke``), parse, and set the thread count."""
    parser.add_argument("--budget-minutes", type=float, default=9.0,
                        help="start no training chunk after this long (a call may "
                        "overrun by one chunk); rerun to resume")
    parser.add_argument("--repeats", type=int, default=30, help="latency repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--smoke", action="store_true", help="tiny budget, *-smoke.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def publish(benchmark: str, payload: dict[str, Any], runs: dict[str, Any], *,
            smoke: bool, config: str = "cpu") -> Path:
    """Finish a resumable benchmark's call: record each trained unit without its per-episode
    test values (``runs``: key -> unit dict or None while unfinished), write the JSON (the
    smoke file for ``--smoke``), print the summary and whether the run is complete."""
    payload["units"] = {k: None if v is None else {kk: vv for kk, vv in v.items() if kk != "test"}
                        for k, v in runs.items()}
    path = write_result(result_path(benchmark, config, smoke=smoke), payload)
    print(json.dumps(payload.get("summary"), indent=1))
    print(f"{'complete' if payload.get('complete') else 'INCOMPLETE (run again to resume)'}: "
          f"{path}")
    return path


class ResumableBenchmark:
    """A benchmark that works in calls of at most ``args.budget_minutes``: its runs live in
    ``benchmarks/runs/NAME[-smoke]/`` (git-ignored), finished units in their ``state.json``."""

    def __init__(self, args: Any, name: str) -> None:
        self.args, self.smoke = args, args.smoke
        self.runs = ROOT / "benchmarks" / "runs" / (f"{name}-smoke" if args.smoke else name)
        self.runs.mkdir(parents=True, exist_ok=True)
        self.state_path = self.runs / "state.json"
        self.state: dict[str, Any] = (json.loads(self.state_path.read_text())
                                      if self.state_path.exists() else {})
        self.deadline = time.time() + 60 * args.budget_minutes

    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)


def train_in_chunks(config: Any, run_dir: Path, deadline: float, chunk: int = 500) -> Any:
    """``fit`` in chunks of ``chunk`` steps until complete (-> FitResult) or past ``deadline``
    (-> None; the next call resumes exactly where this one stopped)."""
    from hypermeta import fit

    result = None
    while result is None or not result.complete:
        if time.time() > deadline:
            return None
        result = fit(config, run_dir, max_steps=chunk)
    return result


def interleaved_medians(arms: dict[str, Callable[[], None]], repeats: int,
                        warmup: int = 2) -> dict[str, dict[str, Any]]:
    """Time each arm ``repeats`` times, alternating arms (and their order) within every round,
    so drift in machine load hits all arms alike. Returns median and all samples in seconds."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            arms[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(s), "samples_s": s}
            for name, s in samples.items()}
