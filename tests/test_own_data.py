"""The ``folder`` and ``table`` task families (your own data, declared in YAML): splits,
episodes, determinism, provenance, clear errors, and a real training run on each."""

from __future__ import annotations

import csv
import math
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypermeta.config import ConfigError, RunConfig
from hypermeta.encoders import stable_hash
from hypermeta.evaluate import evaluate
from hypermeta.runs import load_run
from hypermeta.tasks import LabeledArrayTasks, get_tasks
from hypermeta.tasks.arrays import split_classes
from hypermeta.tasks.folder import bag_of_words, decode_wav, folder_tasks
from hypermeta.tasks.table import table_tasks
from hypermeta.train import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]  # class folders; grey level 30 * (i + 1)
SMALL = {"encoder": {"kind": "set", "dim": 16, "hidden": 32},
         "hypernet": {"kind": "mlp", "hidden": [32]},
         "train": {"steps": 20, "meta_batch": 4, "val_every": 10, "val_tasks": 10}}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- tiny data sets
def make_images(root: Path, per_class: int = 4, size: int = 8) -> Path:
    """Each class a flat grey level, each file one distinct corner pixel."""
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size), 30 * (c + 1), dtype=np.uint8)
            pixels[0, 0] = i
            Image.fromarray(pixels, "L").save(root / name / f"{i}.png")
    return root


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())


def make_wavs(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    t = np.arange(400) / 8000
    for c in range(classes):
        (root / f"tone{c}").mkdir(parents=True)
        for i in range(per_class):
            write_wav(root / f"tone{c}" / f"{i}.wav",
                      0.5 * np.sin(2 * math.pi * 200 * (c + 1) * t + i))
    return root


def make_texts(root: Path, per_class: int = 4) -> Path:
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.txt").write_text(f"The {name} and the {name} {c} again {i}")
    return root


def make_csv(path: Path, tasks: int = 10, rows: int = 12) -> Path:
    """Task ``t``: y = (t + 1) * a - b; a text column that is not a feature; a class label."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["store", "a", "b", "note", "y", "label"])
        for t in range(tasks):
            for _ in range(rows):
                a, b = rng.uniform(-1, 1, 2)
                label = ["2", "10", "1"][int(a > 0) + int(b > 0)]  # numeric order 1 < 2 < 10
                writer.writerow([f"s{t}", f"{a:.6f}", f"{b:.6f}", "memo",
                                 f"{(t + 1) * a - b:.6f}", label])
    return path


def grey_class(x: torch.Tensor) -> torch.Tensor:
    """Class index of flat-grey images ``[..., C, H, W]`` (the median level / 30 - 1)."""
    level = x.flatten(-3).median(-1).values * 255
    return (level / 30).round().long() - 1


# ----------------------------------------------------------------------------- config
def test_options_are_typed_by_the_builders_and_examples_validate():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"tasks": {"name": "folder", "root": "d", "shot": 1,
                                       "channels": 2}})
    text = str(info.value)
    assert "tasks.shot: Extra inputs are not permitted" in text and "tasks.channels" in text
    with pytest.raises(ConfigError, match="tasks.target_column: Field required"):
        RunConfig.from_dict({"tasks": {"name": "table", "path": "t.csv", "task_column": "s"}})
    with pytest.raises(ConfigError, match="tasks.kind"):
        RunConfig.from_dict({"tasks": {"name": "table", "path": "t.csv", "task_column": "s",
                                       "target_column": "y", "kind": "ranking"}})
    for name in ("own_folder_example.yaml", "own_table_example.yaml"):
        config = RunConfig.from_file(CONFIGS / name)
        assert config.tasks.name in ("folder", "table") and config.method == "hypernet"


# ----------------------------------------------------------------------------- folder
def test_folder_images_declared_split_episodes_and_labels(tmp_path):
    root = make_images(tmp_path / "data")
    split = {"train": ["bee", "cat", "ant"], "val": ["dog", "eel"]}  # fox unused, no test
    tasks = folder_tasks(root=str(root), ways=2, shots=1, queries=2, image_size=8,
                         classes=split, seed=3)
    names = sorted(NAMES)
    assert {s: [names[c] for c in ids] for s, ids in tasks.classes.items()} == {
        "train": ["ant", "bee", "cat"], "val": ["dog", "eel"], "test": []}
    ep = tasks.sample("train", 6, gen())
    assert ep.support_x.shape == (6, 2, 1, 8, 8) and ep.query_x.shape == (6, 4, 1, 8, 8)
    assert ep.support_x.dtype == torch.float32 and ep.support_y.dtype == torch.long
    assert float(ep.support_x.min()) >= 0 and float(ep.support_x.max()) <= 1
    assert ep.support_y.tolist() == [[0, 1]] * 6 and ep.query_y.tolist() == [[0, 0, 1, 1]] * 6
    # way w of the support and of the query are the same class, and a train class
    support_class, query_class = grey_class(ep.support_x), grey_class(ep.query_x)
    assert torch.equal(query_class, support_class.repeat_interleave(2, dim=1))
    assert set(support_class.flatten().tolist()) <= {0, 1, 2}
    assert set(grey_class(tasks.sample("val", 5, gen()).query_x).flatten().tolist()) == {3, 4}
    with pytest.raises(ValueError, match="test has 1 class"):  # fox alone cannot be 2-way
        folder_tasks(root=str(root), ways=2, shots=1, queries=2, classes={
            "train": ["ant", "bee"], "test": ["fox"]})
    # colour: 3 channels, grey images give three equal planes; other sizes are resized
    rgb = folder_tasks(root=str(root), ways=2, shots=1, queries=1, image_size=5, channels=3,
                       classes=split).sample("train", 2, gen())
    assert rgb.support_x.shape == (2, 2, 3, 5, 5)
    assert torch.equal(rgb.support_x[:, :, 0], rgb.support_x[:, :, 2])


def test_folder_fraction_split_is_class_disjoint_seeded_and_deterministic(tmp_path):
    root = make_images(tmp_path / "data")
    def build(seed: int) -> LabeledArrayTasks:
        return folder_tasks(root=str(root), ways=2, shots=1, queries=1, image_size=8,
                            fractions=(0.34, 0.33, 0.33), seed=seed)
    tasks = build(0)
    classes = tasks.classes
    assert sorted(c for s in classes.values() for c in s) == list(range(6))
    assert [len(classes[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    # the permutation of LabeledArrayTasks over the sorted class names
    assert classes == split_classes(list(range(6)), (0.34, 0.33, 0.33), 0)
    assert build(0).classes == classes
    assert any(build(seed).classes != classes for seed in range(1, 6))
    a, b = tasks.sample("train", 5, gen(7)), tasks.sample("train", 5, gen(7))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.query_x, tasks.sample("train", 5, gen(8)).query_x)
    assert torch.equal(tasks.fixed_tasks("test", 4).query_x,
                       build(0).fixed_tasks("test", 4).query_x)
    train_classes = set(grey_class(a.support_x).flatten().tolist())
    assert train_classes <= set(classes["train"])


def test_folder_audio_is_resampled_cut_and_padded(tmp_path):
    root = make_wavs(tmp_path / "data")
    tasks = folder_tasks(root=str(root), ways=2, shots=1, queries=1, audio_samples=300,
                         sample_rate=8000, classes={"train": ["tone0", "tone1"],
                                                    "test": ["tone2", "tone3"]})
    ep = tasks.sample("test", 3, gen())
    assert ep.support_x.shape == (3, 2, 300) and ep.support_x.dtype == torch.float32
    assert float(ep.support_x.abs().max()) <= 1 and float(ep.support_x.abs().max()) > 0.4
    # 100 samples at 16 kHz -> 50 at 8 kHz, then zero padding to 120
    clip = np.linspace(-1, 1, 100, dtype=np.float32)
    write_wav(tmp_path / "fast.wav", clip, rate=16000)
    out = decode_wav((tmp_path / "fast.wav").read_bytes(), samples=120, sample_rate=8000)
    assert out.shape == (120,) and not out[50:].any() and out[:50].any()
    assert np.allclose(out[:50], clip[::2], atol=1e-3)
    write_wav(tmp_path / "stereo.wav", np.zeros(20), channels=2)
    with pytest.raises(ValueError, match="mono 16-bit PCM"):
        decode_wav((tmp_path / "stereo.wav").read_bytes(), samples=10, sample_rate=8000)
    (root / "tone0" / "9.wav").write_bytes((tmp_path / "stereo.wav").read_bytes())
    with pytest.raises(ValueError, match=r"cannot read .*9\.wav as audio: need mono"):
        folder_tasks(root=str(root), ways=2, shots=1, queries=1, audio_samples=300,
                     fractions=(0.5, 0.0, 0.5))


def test_folder_text_is_a_normalised_hashed_bag_of_words(tmp_path):
    vector = bag_of_words("Cat cat DOG!", 64)
    assert vector.shape == (64,) and math.isclose(float(np.linalg.norm(vector)), 1, rel_tol=1e-6)
    cat, dog = stable_hash("cat") % 64, stable_hash("dog") % 64
    if cat != dog:
        assert math.isclose(float(vector[cat]), 2 / math.sqrt(5), rel_tol=1e-6)
    assert not bag_of_words("...", 8).any()
    root = make_texts(tmp_path / "data")
    tasks = folder_tasks(root=str(root), ways=3, shots=2, queries=1, text_features=32,
                         fractions=(0.5, 0.0, 0.5))
    ep = tasks.sample("train", 2, gen())
    assert ep.support_x.shape == (2, 6, 32) and ep.query_y.shape == (2, 3)
    assert torch.allclose(ep.support_x.norm(dim=-1), torch.ones(2, 6))


def test_folder_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        folder_tasks(root=str(tmp_path / "none"))
    root = make_images(tmp_path / "data")
    options = {"root": str(root), "ways": 2, "shots": 1, "queries": 1, "image_size": 8}
    with pytest.raises(ValueError, match=r"train names classes not in the data: \['cow'\]"):
        folder_tasks(**options, classes={"train": ["ant", "cow"]})
    with pytest.raises(ValueError, match=r"train and test share classes \['bee'\]"):
        folder_tasks(**options, classes={"train": ["ant", "bee"], "test": ["bee", "cat"]})
    with pytest.raises(ValueError, match=r"splits are named .*\['validation'\]"):
        folder_tasks(**options, classes={"train": ["ant", "bee"], "validation": ["cat"]})
    with pytest.raises(ValueError, match=r"fewer than shots \+ queries = 9 files: \['ant \(4\)"):
        folder_tasks(**{**options, "queries": 8}, classes={"train": ["ant", "bee"]})
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        folder_tasks(**options, channels=2)  # type: ignore[arg-type]
    (root / "ant" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.png as image"):
        folder_tasks(**options, classes={"train": ["ant", "bee"]})
    (root / "ant" / "broken.png").unlink()
    (root / "ant" / ".DS_Store").write_bytes(b"hidden files are skipped")
    (root / "README.md").write_text("files in root are not examples")
    folder_tasks(**options, classes={"train": ["ant", "bee"]})
    (root / "bee" / "notes.md").write_text("?")
    with pytest.raises(ValueError, match=r"unknown type, e.g. \['bee/notes.md'\]"):
        folder_tasks(**options)
    (root / "bee" / "notes.md").unlink()
    (root / "bee" / "extra.txt").write_text("a text among images")
    with pytest.raises(ValueError, match=r"mixes file types \['image', 'text'\]"):
        folder_tasks(**options)


def test_folder_provenance_follows_file_bytes_and_split(tmp_path):
    root = make_images(tmp_path / "data")
    split = {"train": ["ant", "bee"], "val": ["cat", "dog"], "test": ["eel", "fox"]}
    def provenance(**changes: object) -> dict:
        options = {"root": str(root), "ways": 2, "shots": 1, "queries": 1, "image_size": 8,
                   "classes": split, **changes}
        return get_tasks("folder", **options).provenance()
    first = provenance()
    assert len(first["data_sha256"]) == 64 and set(first["classes_sha256"]) == {
        "train", "val", "test"}
    assert provenance() == first
    assert provenance(image_size=6) == first  # preprocessing is config, not data
    assert provenance(classes={**split, "test": ["fox", "eel"]}) == first  # order is no matter
    other = get_tasks("folder", root=str(root), ways=2, shots=1, queries=1, image_size=8,
                      classes={"train": ["ant", "cat"], "val": ["bee", "dog"],
                               "test": ["eel", "fox"]}).provenance()
    assert other["data_sha256"] == first["data_sha256"]
    assert other["classes_sha256"]["train"] != first["classes_sha256"]["train"]
    assert other["classes_sha256"]["test"] == first["classes_sha256"]["test"]
    pixels = np.asarray(Image.open(root / "fox" / "1.png")).copy()
    pixels[3, 3] += 1
    Image.fromarray(pixels, "L").save(root / "fox" / "1.png")
    changed = provenance()
    assert changed["data_sha256"] != first["data_sha256"]
    assert changed["classes_sha256"] == first["classes_sha256"]
    (root / "fox" / "1.png").rename(root / "fox" / "7.png")  # a renamed file changes it too
    assert provenance()["data_sha256"] != changed["data_sha256"]


# ----------------------------------------------------------------------------- table
def test_table_regression_episodes_are_tasks_of_rows(tmp_path):
    path = make_csv(tmp_path / "sales.csv")
    tasks = table_tasks(path=str(path), task_column="store", target_column="y", shots=3,
                        queries=4, fractions=(0.6, 0.2, 0.2), seed=1)
    assert tasks.feature_names == ["a", "b", "label"]  # every other numeric column
    splits = tasks.split
    assert sorted(t for s in splits.values() for t in s) == sorted(f"s{t}" for t in range(10))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert tasks.x_shape == (3,) and tasks.out_dim == 1 and tasks.kind.name == "regression"
    ep = tasks.sample("train", 5, gen())
    assert ep.support_x.shape == (5, 3, 3) and ep.query_x.shape == (5, 4, 3)
    assert ep.support_y.shape == (5, 3, 1) and ep.query_y.shape == (5, 4, 1)
    assert ep.support_x.dtype == ep.support_y.dtype == torch.float32
    assert isinstance(ep.descriptor, list) and set(ep.descriptor) <= set(splits["train"])
    for t, name in enumerate(ep.descriptor):  # every row is of the task it is sampled for
        slope = int(name[1:]) + 1
        for x, y in ((ep.support_x[t], ep.support_y[t]), (ep.query_x[t], ep.query_y[t])):
            assert torch.allclose(y[:, 0], slope * x[:, 0] - x[:, 1], atol=1e-4)
        rows = torch.cat([ep.support_x[t], ep.query_x[t]])
        assert len(torch.unique(rows, dim=0)) == 7  # without replacement
    again = tasks.sample("train", 5, gen())
    assert torch.equal(again.query_x, ep.query_x) and again.descriptor == ep.descriptor
    assert set(tasks.fixed_tasks("test", 8).descriptor) <= set(splits["test"])
    explicit = table_tasks(path=str(path), task_column="store", target_column="y",
                           feature_columns=["b"], shots=3, queries=4,
                           tasks={"train": ["s1", "s0"], "val": ["s2"]})
    assert explicit.split == {"train": ["s0", "s1"], "val": ["s2"], "test": []}
    assert explicit.x_shape == (1,)
    with pytest.raises(ValueError, match="split 'test' of table has no tasks"):
        explicit.sample("test", 1, gen())


def test_table_classification_maps_labels_per_dataset(tmp_path):
    path = make_csv(tmp_path / "sales.csv")
    tasks = table_tasks(path=str(path), task_column="store", target_column="label",
                        kind="classification", shots=4, queries=4)
    assert tasks.kind.name == "classification" and tasks.out_dim == 3
    assert tasks.class_names == ["1", "2", "10"]  # numeric order
    assert tasks.feature_names == ["a", "b", "y"]
    ep = tasks.sample("val", 3, gen())
    assert ep.support_y.shape == (3, 4) and ep.query_y.dtype == torch.long
    assert ep.ways == 3 and set(ep.query_y.unique().tolist()) <= {0, 1, 2}
    # label "1" (class 0) <=> a > 0 and b > 0; "10" (class 2) <=> exactly one of them > 0
    x, y = ep.query_x.reshape(-1, 3), ep.query_y.reshape(-1)
    assert torch.equal(y == 0, (x[:, 0] > 0) & (x[:, 1] > 0))
    assert torch.equal(y == 2, (x[:, 0] > 0) ^ (x[:, 1] > 0))


def test_table_bad_inputs_give_clear_errors(tmp_path, monkeypatch):
    path = make_csv(tmp_path / "t.csv", tasks=4, rows=6)
    base = {"path": str(path), "task_column": "store", "target_column": "y", "shots": 2,
            "queries": 2}
    with pytest.raises(ValueError, match=r"no column\(s\) \['price'\]; its columns are"):
        table_tasks(**{**base, "target_column": "price"})
    with pytest.raises(ValueError, match=r"'note' needs finite numbers; got \[.row 1: 'memo'"):
        table_tasks(**base, feature_columns=["a", "note"])
    with pytest.raises(ValueError, match="must not hold the task or target column"):
        table_tasks(**base, feature_columns=["a", "y"])
    with pytest.raises(ValueError, match=r"tasks not in the data: \['s9'\]"):
        table_tasks(**base, tasks={"train": ["s0", "s9"]})
    with pytest.raises(ValueError, match=r"train and val share tasks \['s1'\]"):
        table_tasks(**base, tasks={"train": ["s0", "s1"], "val": ["s1"]})
    with pytest.raises(ValueError, match=r"fewer than shots \+ queries = 8 rows: \['s"):
        table_tasks(**{**base, "queries": 6})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        table_tasks(**{**base, "path": str(tmp_path / "none.csv")})
    lines = path.read_text().splitlines()
    broken = tmp_path / "nan.csv"
    cells = lines[3].split(",")
    cells[1] = "NaN"
    broken.write_text("\n".join([lines[0], *lines[1:3], ",".join(cells), *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"column 'a' needs finite numbers; got \[.row 3: 'NaN'"):
        table_tasks(**{**base, "path": str(broken)})
    cells[1] = ""
    broken.write_text("\n".join([lines[0], *lines[1:3], ",".join(cells), *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"column 'a' needs finite numbers; got \[.row 3: ''"):
        table_tasks(**{**base, "path": str(broken), "feature_columns": ["a", "b"]})
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        table_tasks(**{**base, "path": str(tmp_path / "empty.csv")})
    (tmp_path / "header.csv").write_text(lines[0] + "\n")
    with pytest.raises(ValueError, match="has no rows"):
        table_tasks(**{**base, "path": str(tmp_path / "header.csv")})
    (tmp_path / "ragged.csv").write_text("\n".join([lines[0], lines[1] + ",extra"]))
    with pytest.raises(ValueError, match=r"rows \[1\] do not have the 6 values"):
        table_tasks(**{**base, "path": str(tmp_path / "ragged.csv")})
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        table_tasks(**{**base, "path": str(tmp_path / "t.parquet")})


def test_table_provenance_follows_file_bytes_and_split(tmp_path):
    path = make_csv(tmp_path / "t.csv", tasks=4, rows=6)
    options = {"path": str(path), "task_column": "store", "target_column": "y",
               "shots": 2, "queries": 2, "tasks": {"train": ["s0", "s1"], "test": ["s2"]}}
    first = get_tasks("table", **options).provenance()
    assert set(first) == {"data_sha256", "tasks_sha256"} and len(first["data_sha256"]) == 64
    assert get_tasks("table", **options).provenance() == first
    resplit = get_tasks("table", **{**options, "tasks": {"train": ["s0", "s3"],
                                                          "test": ["s2"]}}).provenance()
    assert resplit["data_sha256"] == first["data_sha256"]
    assert resplit["tasks_sha256"]["train"] != first["tasks_sha256"]["train"]
    path.write_text(path.read_text().replace("memo", "memo2", 1))
    assert get_tasks("table", **options).provenance()["data_sha256"] != first["data_sha256"]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 20-step hypernet run on a text folder (data root, run folder)."""
    base = tmp_path_factory.mktemp("folder_run")
    root = make_texts(base / "data")
    config = RunConfig.from_dict({
        "method": "hypernet",
        "tasks": {"name": "folder", "root": str(root), "ways": 2, "shots": 1, "queries": 2,
                  "text_features": 32, "classes": {"train": ["ant", "bee"],
                                                   "val": ["cat", "dog"],
                                                   "test": ["eel", "fox"]}},
        "target": {"name": "mlp", "in_dim": 32, "out_dim": 2, "hidden": [16]}, **SMALL})
    fit(config, base / "run")
    return root, base / "run"


def test_folder_run_trains_loads_and_evaluates(folder_run):
    _, run_dir = folder_run
    assert (run_dir / "best.safetensors").is_file()
    run = load_run(run_dir)
    assert run.tasks.name == "folder" and "data_sha256" in run.provenance
    result = evaluate(run.learner, run.tasks.fixed_tasks("test", 20), run.tasks.kind)
    assert 0 <= result["mean"] <= 1 and result["tasks"] == 20


def test_load_run_refuses_changed_training_data_unless_allowed(folder_run):
    root, run_dir = folder_run
    file = root / "ant" / "0.txt"
    original = file.read_bytes()
    try:
        file.write_text("a different training text")
        with pytest.raises(ValueError, match=r"other data .*data_sha256"):
            load_run(run_dir)
        run = load_run(run_dir, allow_data_change=True)
        assert run.tasks.name == "folder"
    finally:
        file.write_bytes(original)
    load_run(run_dir)  # the original data is accepted again


@pytest.mark.parametrize(("kind", "target_column", "out_dim"),
                         [("regression", "y", 1), ("classification", "label", 3)])
def test_table_run_trains_loads_and_evaluates(tmp_path, kind, target_column, out_dim):
    path = make_csv(tmp_path / "sales.csv")
    config = RunConfig.from_dict({
        "method": "hypernet",
        "tasks": {"name": "table", "path": str(path), "task_column": "store",
                  "target_column": target_column, "kind": kind, "shots": 3, "queries": 4},
        "target": {"name": "mlp", "in_dim": 3, "out_dim": out_dim, "hidden": [16]}, **SMALL})
    fit(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.tasks.name == "table" and run.tasks.kind.name == kind
    result = evaluate(run.learner, run.tasks.fixed_tasks("test", 20), run.tasks.kind)
    assert math.isfinite(result["mean"]) and result["mean"] >= 0
    if kind == "classification":
        assert result["mean"] <= 1
    path.write_text(path.read_text().replace("memo", "memo!", 1))
    with pytest.raises(ValueError, match="other data"):
        load_run(tmp_path / "run")
    assert load_run(tmp_path / "run", allow_data_change=True).tasks.out_dim == out_dim
