from __future__ import annotations

import os
import tempfile

# One intra-op thread for the suite and every process it starts (CLI and server tests): the
# models here are tiny, and with another CPU-bound process on the machine, torch's spinning
# threads would otherwise fight it and slow the suite many times over. No test here measures
# threading.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# MiniLM embeddings the tests compute are cached in a folder of this session, never in the
# user's ~/.cache/hypermeta.
os.environ["HYPERMETA_CACHE"] = tempfile.mkdtemp(prefix="hypermeta-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device test runs on the CPU, and on CUDA when it is present."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
