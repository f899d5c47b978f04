"""Looking inside a trained run: interpolation ends at the parents' networks bit for bit,
fusion gives plain exportable networks, the map is made of the model's own embeddings, bad
input is a clear error, and the HTML report renders in headless Chromium without errors or
blank figures."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hypermeta import RunConfig, fit, load_run
from hypermeta import inspect as hi
from hypermeta.cli import app
from hypermeta.export import export_network
from hypermeta.report import write_report

CONFIG = {"method": "hypernet", "seed": 0, "tasks": {"name": "sinusoid", "shots": 5,
                                                     "queries": 10},
          "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [16, 16]},
          "encoder": {"kind": "set", "dim": 16, "hidden": 32}, "hypernet": {"hidden": [32]},
          "train": {"steps": 30, "meta_batch": 8, "val_every": 15, "val_tasks": 20,
                    "log_every": 5}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inspect") / "run"
    fit(RunConfig.from_dict(CONFIG), folder)
    return folder


@pytest.fixture(scope="module")
def loaded(run_dir: Path):
    run = load_run(run_dir)
    return run.hypermodel, run.tasks, run.tasks.fixed_tasks("test", 40)


def test_interpolation_ends_at_the_parents_networks_exactly(loaded) -> None:
    model, tasks, test = loaded
    a, b = test.task(0), test.task(1)
    path = hi.interpolate(model, a, b, [0.0, 0.25, 0.5, 1.0])
    for end, parent in ((0, a), (-1, b)):
        params = model.params(parent)
        for name, value in params.items():
            assert torch.equal(path.params[name][end], value[0]), name
    # the path's metric at alpha 0 is task a's own network's
    own = tasks.kind.per_task_metric(model.predict(a), a.query_y)
    assert torch.allclose(path.metric_a[0], own[0], atol=1e-6)
    assert path.pred is not None and path.pred.shape == (4, 200)


def test_fusion_networks_are_plain_exportable_modules(loaded, tmp_path: Path) -> None:
    model, tasks, test = loaded
    a, b = test.task(2), test.task(3)
    combined = hi.sum_task(tasks, a, b)
    assert combined is not None and combined.query_y is not None
    assert torch.allclose(combined.query_y, a.query_y + tasks.function(b.descriptor, a.query_x))
    fused = hi.fuse(model, a, b, combined)
    assert set(fused.networks) == {"embedding_mix", "support_mix", "weight_avg", "parent_a",
                                   "parent_b"}
    assert set(fused.metrics["weight_avg"]) == {"a", "b", "combined"}
    # parent_a is task a's own generated network, as a standalone module
    parent = fused.networks["parent_a"]
    assert not any(isinstance(m, type(model)) for m in parent.modules())
    with torch.no_grad():
        assert torch.allclose(parent(a.query_x[0]), model.predict(a)[0], atol=1e-5)
    # the averaged weights really are the mean of the parents' weights
    pa, pb = model.params(a), model.params(b)
    avg = dict(fused.networks["weight_avg"].named_parameters())
    for name in pa:
        assert torch.allclose(avg[name], (pa[name][0] + pb[name][0]) / 2, atol=1e-6)
    path = export_network(fused.networks["embedding_mix"], tmp_path / "fused.safetensors",
                          "safetensors", example=a.query_x[0])
    assert path.exists()


def test_the_map_is_made_of_the_models_own_embeddings(loaded) -> None:
    model, tasks, test = loaded
    mapped = hi.task_map(model, test, tasks.properties(test), new=test.slice(0, 2), k=3)
    with torch.no_grad():
        own = model.encoder(model.prepare(test))
    assert torch.allclose(mapped.embeddings, own, atol=1e-6)
    assert set(mapped.properties) == {"amplitude", "phase"}
    assert mapped.points.shape == (40, 2) and mapped.nearest[0][0] == 0  # a task is nearest
    assert mapped.nearest[1][0] == 1                                      # to itself
    influence = hi.support_influence(model, test.task(0))
    assert influence["param_change"].shape == (5,) and bool((influence["param_change"] > 0).all())


def test_bad_input_is_a_clear_error(tmp_path: Path, loaded, run_dir: Path) -> None:
    model, tasks, test = loaded
    with pytest.raises(ValueError, match="at least 3 tasks"):
        hi.task_map(model, test.slice(0, 2))
    with pytest.raises(ValueError, match="one task"):
        hi.interpolate(model, test.slice(0, 2), test.task(3))
    with pytest.raises(ValueError, match="property 'size' must be"):
        hi.task_map(model, test, {"size": torch.zeros(3)})
    with pytest.raises(ValueError, match="'colour' is not declared .*'amplitude'"):
        write_report(run_dir, tmp_path / "r", colour_by=["colour"])
    assert not (tmp_path / "r").exists()
    maml = tmp_path / "maml"
    fit(RunConfig.from_dict({**CONFIG, "method": "fomaml", "train": {**CONFIG["train"],
                                                                     "steps": 4}}), maml)
    with pytest.raises(ValueError, match="needs a HyperModel"):
        hi.embed(load_run(maml).learner, test)
    page = write_report(maml, tmp_path / "maml-report").read_text()
    assert "Embedding sections not shown" in page and "Training curves" in page
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and "not a run folder" in result.output


def _decoded_images(page: str) -> list[np.ndarray]:
    from PIL import Image

    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("L"), dtype=float)
            for b in blobs]


def test_the_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: sudo apt-get install chromium (make " \
                     "system-deps installs it when run as root)"
    result = CliRunner().invoke(app, ["inspect", str(run_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = Path(result.output.strip().splitlines()[-1])
    page = report.read_text()
    assert "<script" not in page and "http" not in page.split("<pre>")[0]  # self-contained
    for title in ("Training curves", "Task-embedding map", "Generated weights across tasks",
                  "Interpolation", "Model fusion", "Which support examples matter", "Config"):
        assert title in page
    images = _decoded_images(page)
    assert len(images) == 4  # curves, map, interpolation, influence (the rest are tables)
    assert all(image.var() > 10 for image in images)  # none blank
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--window-size=1200,4000",
         f"--screenshot={shot}", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines()
               if "CONSOLE" in line or "Failed to load resource" in line
               or "Not allowed to load" in line]
    assert not console, console
    from PIL import Image

    screenshot = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert screenshot.var() > 100  # a page with figures, not a blank one


def test_gate_statistics_follow_the_masks_materialize_prunes_with(tmp_path: Path, loaded) -> None:
    _, _, test = loaded
    gated = tmp_path / "gated"
    fit(RunConfig.from_dict({**CONFIG, "gates": {"enabled": True}}), gated)
    model = load_run(gated).hypermodel
    stats = hi.gate_stats(model, test.slice(0, 6))
    assert stats["open"].shape == (6, len(stats["sites"])) and stats["size"].shape == (6,)
    assert bool(((stats["open"] >= 0) & (stats["open"] <= 1)).all())
    # task 0's open fractions are those of its pruned, materialised network
    params = model.params(test.task(0))
    net = model.target.materialize({n: p[0] for n, p in params.items()})
    hidden = [m.out_features for m in net if isinstance(m, torch.nn.Linear)][:-1]
    widths = torch.tensor(hidden, dtype=torch.float) / stats["units"]
    assert torch.allclose(widths, stats["open"][0])
    page = write_report(gated, tmp_path / "gated-report", tasks=20).read_text()
    assert "Per-task structure (gates)" in page and len(_decoded_images(page)) == 5
    with pytest.raises(ValueError, match="no structure gates"):
        hi.gate_stats(loaded[0], test)
