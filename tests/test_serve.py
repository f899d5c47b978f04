import math
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from hypermeta import Episode
from hypermeta.config import RunConfig
from hypermeta.runs import load
from hypermeta.serve import create_app
from hypermeta.train import fit


def tiny(tmp_path_factory, name, **extra):
    run = tmp_path_factory.mktemp(name)
    config = RunConfig.from_dict({
        "method": "hypernet", "tasks": {"name": "sinusoid", "shots": 5},
        "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [8]},
        "encoder": {"kind": "set", "dim": 8, "hidden": 16}, "hypernet": {"hidden": [16]},
        "train": {"steps": 4, "meta_batch": 4, "val_every": 2, "val_tasks": 5}, **extra})
    fit(config, run)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny(tmp_path_factory, "run")


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    return tiny(tmp_path_factory, "other", seed=7)


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    return tiny(tmp_path_factory, "features", encoder={"kind": "features", "in_dim": 2, "dim": 8})


SUPPORT = {"x": [[-4.0], [-2.0], [0.0], [1.0], [3.0]], "y": [0.5, -1.0, 0.2, 0.9, -0.3]}
QUERY = [[-3.0], [0.5], [4.0]]


def client(run_dir, tmp_path, **kwargs):
    return TestClient(create_app(run_dir, state_dir=tmp_path / "state", **kwargs))


def expected(run_dir, support, query):
    model = load(run_dir)
    x = torch.tensor(support["x"])[None]
    episode = Episode(x, torch.tensor(support["y"])[None, :, None], torch.tensor(query)[None])
    return model.predict(episode)[0].tolist()


def test_register_get_predict_delete(run_dir, tmp_path):
    with client(run_dir, tmp_path) as api:
        reply = api.post("/v1/tasks", json={"support": SUPPORT})
        assert reply.status_code == 201, reply.text
        task = reply.json()["task_id"]
        got = api.get(f"/v1/tasks/{task}").json()
        assert got["kind"] == "support" and got["content_id"] == reply.json()["content_id"]
        pred = api.post(f"/v1/tasks/{task}/predict", json={"x": QUERY})
        assert pred.status_code == 200
        for a, b in zip(pred.json()["predictions"], expected(run_dir, SUPPORT, QUERY)):
            assert math.isclose(a[0], b[0], rel_tol=1e-5, abs_tol=1e-6)
        one_shot = api.post("/v1/predict", json={"support": SUPPORT, "x": QUERY}).json()
        assert one_shot["predictions"] == pred.json()["predictions"]
        assert api.delete(f"/v1/tasks/{task}").status_code == 200
        assert api.get(f"/v1/tasks/{task}").status_code == 404
        assert api.delete(f"/v1/tasks/{task}").status_code == 404
        health = api.get("/healthz").json()
        assert health["status"] == "ok"
        metrics = api.get("/metrics").json()
        assert metrics["requests"]["/v1/tasks 201"] == 1
        assert "p99_ms" in metrics["latency"]["/v1/predict"]


def test_descriptor_registration(feature_run, tmp_path):
    with client(feature_run, tmp_path) as api:
        reply = api.post("/v1/tasks", json={"descriptor": [2.0, 1.0]})
        assert reply.status_code == 201, reply.text
        task = reply.json()["task_id"]
        assert len(api.post(f"/v1/tasks/{task}/predict", json={"x": QUERY}).json()[
            "predictions"]) == 3
        assert api.post("/v1/tasks", json={"descriptor": [1.0]}).status_code == 422
        assert api.post("/v1/tasks", json={"descriptor": "sine"}).status_code == 422


@pytest.mark.parametrize("body, status, message", [
    # the request schema is exact to the run's family: [N, 1] finite float32 numbers, no
    # strings or booleans coerced (pydantic answers, naming the place)
    ({"support": {"x": [[1.0, 2.0]], "y": [1.0]}}, 422, "at most 1 item"),
    ({"support": {"x": [["a"]], "y": [1.0]}}, 422, "Input should be a valid number"),
    ({"support": {"x": [["1.5"]], "y": [1.0]}}, 422, "Input should be a valid number"),
    ({"support": {"x": [[True]], "y": [1.0]}}, 422, "Input should be a valid number"),
    ({"support": {"x": [[1e300]], "y": [1.0]}}, 422, "less than or equal to"),
    ({"support": {"x": [[1.0]], "y": [1e300]}}, 422, "less than or equal to"),
    ({"support": {"x": [[1.0], [2.0]], "y": [1.0]}}, 422, "support.y has 1"),
    ({"support": {"x": [], "y": []}}, 422, "at least 1 item"),
    ({"descriptor": [1.0, 2.0], "support": SUPPORT}, 422, "Extra inputs are not permitted"),
    ({}, 422, "Field required"),
    ({"support": {"x": [[0.0]] * 30, "y": [0.0] * 30}}, 413, "limit is 20"),
])
def test_bad_registrations_are_4xx_and_store_nothing(run_dir, tmp_path, body, status, message):
    with client(run_dir, tmp_path, max_rows=20) as api:
        reply = api.post("/v1/tasks", json=body)
        assert reply.status_code == status and message in reply.text, reply.text
        assert api.get("/metrics").json()["tasks_stored"] == 0


def test_nan_unknown_ids_oversized_bodies_and_auth(run_dir, tmp_path):
    with client(run_dir, tmp_path, max_body_bytes=2000, token="s3cret") as api:
        auth = {"Authorization": "Bearer s3cret"}
        assert api.get("/healthz").status_code == 200  # health needs no token
        assert api.post("/v1/predict", json={"support": SUPPORT, "x": QUERY}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert api.get("/metrics", headers=wrong).status_code == 401
        body = '{"support": {"x": [[NaN]], "y": [1.0]}, "x": [[1.0]]}'
        reply = api.post("/v1/predict", content=body, headers={**auth,
                                                               "content-type": "application/json"})
        assert reply.status_code == 422 and "finite number" in reply.text
        assert api.post("/v1/tasks/abc/predict", json={"x": QUERY},
                        headers=auth).status_code == 404
        big = {"support": SUPPORT, "x": [[0.0]] * 500}
        assert api.post("/v1/predict", json=big, headers=auth).status_code == 413


def test_lru_eviction_regenerates_the_same_network(run_dir, tmp_path):
    with client(run_dir, tmp_path, cache_size=1) as api:
        first = api.post("/v1/tasks", json={"support": SUPPORT}).json()["task_id"]
        before = api.post(f"/v1/tasks/{first}/predict", json={"x": QUERY}).json()
        other = {"x": SUPPORT["x"], "y": [-v for v in SUPPORT["y"]]}
        api.post("/v1/tasks", json={"support": other})  # evicts the first task
        after = api.post(f"/v1/tasks/{first}/predict", json={"x": QUERY}).json()
        assert after == before
        cache = api.get("/metrics").json()["cache"]
        assert cache["size"] == 1 and cache["evictions"] >= 1 and cache["misses"] >= 1


def test_tasks_of_another_model_version_get_409(run_dir, other_run, tmp_path):
    with client(run_dir, tmp_path) as api:
        task = api.post("/v1/tasks", json={"support": SUPPORT}).json()["task_id"]
    with client(other_run, tmp_path) as api:  # same state dir, another checkpoint
        reply = api.get(f"/v1/tasks/{task}")
        assert reply.status_code == 409 and "model version" in reply.text
        assert api.post(f"/v1/tasks/{task}/predict", json={"x": QUERY}).status_code == 409


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir, state, port):
    process = subprocess.Popen(
        [sys.executable, "-m", "hypermeta", "serve", str(run_dir), "--port", str(port),
         "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "HYPERMETA_TOKEN"})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"server did not start: {process.stderr.read().decode()[-2000:]}")


def test_real_server_keeps_tasks_across_sigkill(run_dir, tmp_path):
    port, state = free_port(), tmp_path / "state"
    server = start_server(run_dir, state, port)
    try:
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json={"support": SUPPORT})
        assert reply.status_code == 201
        task = reply.json()["task_id"]
        prediction = httpx.post(f"http://127.0.0.1:{port}/v1/tasks/{task}/predict",
                                json={"x": QUERY}).json()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    server = start_server(run_dir, state, port)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/tasks/{task}").status_code == 200
        again = httpx.post(f"http://127.0.0.1:{port}/v1/tasks/{task}/predict", json={"x": QUERY})
        assert again.json() == prediction
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)


def test_non_loopback_bind_without_token_is_refused(run_dir):
    out = subprocess.run([sys.executable, "-m", "hypermeta", "serve", str(run_dir), "--host",
                          "0.0.0.0"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "HYPERMETA_TOKEN"})
    assert out.returncode == 2 and "without --token" in out.stderr


class Blobs:
    """A small classification family registered for this test only."""

    def __new__(cls, shots: int = 2, queries: int = 3, ways: int = 3):
        import numpy as np

        from hypermeta.tasks import LabeledArrayTasks

        rng = np.random.default_rng(0)
        centers = rng.normal(size=(20, 4)) * 3
        x = (np.repeat(centers, 10, axis=0) + rng.normal(size=(200, 4))).astype(np.float32)
        return LabeledArrayTasks(x, np.repeat(np.arange(20), 10), ways=ways, shots=shots,
                                 queries=queries, name="blobs")


def test_classification_predictions_come_with_probabilities(tmp_path, monkeypatch):
    from hypermeta.registry import TASK_FAMILIES

    monkeypatch.setattr(TASK_FAMILIES, "_entries", dict(TASK_FAMILIES._entries))
    TASK_FAMILIES.register("blobs", Blobs)  # into the copy: gone after the test
    config = RunConfig.from_dict({
        "method": "hypernet", "tasks": {"name": "blobs", "shots": 2, "queries": 3, "ways": 3},
        "target": {"name": "mlp", "in_dim": 4, "out_dim": 3, "hidden": [8]},
        "encoder": {"kind": "set", "dim": 8, "hidden": 16}, "hypernet": {"hidden": [16]},
        "train": {"steps": 2, "meta_batch": 2, "val_every": 2, "val_tasks": 4}})
    fit(config, tmp_path / "run")
    with client(tmp_path / "run", tmp_path) as api:
        support = {"x": [[0.0] * 4, [1.0] * 4, [2.0] * 4], "y": [0, 1, 2]}
        reply = api.post("/v1/predict", json={"support": support, "x": [[0.5] * 4, [2.0] * 4]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert len(body["predictions"]) == 2 and all(p in (0, 1, 2) for p in body["predictions"])
        assert all(abs(sum(row) - 1) < 1e-5 for row in body["probabilities"])
        bad = {"x": support["x"], "y": [0, 1, 5]}
        reply = api.post("/v1/tasks", json={"support": bad})
        assert reply.status_code == 422 and "less than or equal to 2" in reply.text
