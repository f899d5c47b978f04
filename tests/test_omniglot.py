"""Omniglot loading, splits and the prepare round trip. Uses the real data when HYPERMETA_DATA
points at it (``make test`` sets it to ../shared/data when that folder exists)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypermeta.tasks.omniglot import (
    load_omniglot,
    omniglot_dir,
    omniglot_tasks,
    prepare_omniglot,
    read_split,
)

DATA = os.environ.get("HYPERMETA_DATA")
needs_data = pytest.mark.skipif(
    DATA is None or not (Path(DATA) / "omniglot" / "omniglot.npz").is_file(),
    reason="set HYPERMETA_DATA to the folder holding omniglot/ (make test does)")


def test_missing_location_and_files_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERMETA_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="set HYPERMETA_DATA"):
        omniglot_dir()
    with pytest.raises(FileNotFoundError, match="hypermeta data prepare omniglot"):
        omniglot_dir(tmp_path)


def test_wrong_arrays_are_rejected(tmp_path):
    (tmp_path / "omniglot").mkdir()
    np.savez(tmp_path / "omniglot" / "omniglot.npz", images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="lacks arrays"):
        load_omniglot(tmp_path)
    arrays = {k: np.zeros(3) for k in ("split", "alphabet", "character", "drawer", "char_id",
                                        "path")}
    np.savez(tmp_path / "omniglot" / "omniglot.npz", images=np.zeros((3, 28, 28), np.float32),
             label=np.arange(3), **arrays)
    with pytest.raises(ValueError, match="must be uint8 of shape"):
        load_omniglot(tmp_path)
    (tmp_path / "omniglot" / "omniglot.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_omniglot(tmp_path)


@needs_data
def test_vinyals_splits_are_disjoint_in_every_rotation():
    lists = {name: read_split(DATA, name) for name in ("train", "val", "test", "trainval")}
    assert [len(lists[n]) for n in ("train", "val", "test", "trainval")] == [
        1028 * 4, 172 * 4, 423 * 4, 1200 * 4]
    def characters(lines):
        return {line.rpartition("/")[0] for line in lines}
    assert not characters(lists["test"]) & characters(lists["trainval"])
    assert not characters(lists["train"]) & characters(lists["val"])
    tasks = omniglot_tasks(DATA, ways=5, shots=1, queries=2)
    assert len(tasks.classes["train"]) == 4112 and len(tasks.classes["test"]) == 1692
    ep = tasks.sample("test", 3, torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (3, 5, 1, 28, 28) and ep.query_x.shape == (3, 10, 1, 28, 28)
    assert ep.support_x.min() >= 0 and ep.support_x.max() <= 1


@needs_data
def test_rotations_are_distinct_classes():
    tasks = omniglot_tasks(DATA, ways=5, shots=1, queries=1)
    train = tasks.classes["train"]
    first = [tasks.x[tasks._rows[c][0]] for c in train[:4]]  # one character, 4 rotations
    assert torch.equal(first[1], torch.rot90(first[0], 1, dims=(1, 2)))
    assert all(not torch.equal(first[0], other) for other in first[1:])


def _png_tree(root: Path, arrays105: dict, rows: list[int]) -> None:
    for row in rows:
        rel = str(arrays105["path"][row])
        ink = arrays105["images"][row]
        picture = Image.fromarray((255 - ink).astype(np.uint8)).convert("1")  # black on white
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)


def _zip_split(root: Path, split: str) -> None:
    """Turn ROOT/SPLIT/ into ROOT/SPLIT.zip."""
    with zipfile.ZipFile(root / f"{split}.zip", "w") as zf:
        for path in sorted((root / split).rglob("*.png")):
            zf.write(path, path.relative_to(root).as_posix())
    shutil.rmtree(root / split)


@needs_data
def test_prepare_round_trip_equals_the_shipped_arrays(tmp_path):
    folder = Path(DATA) / "omniglot"
    with np.load(folder / "omniglot105.npz") as data:
        arrays105 = {k: data[k] for k in ("images", "path")}
    # two characters of the background set and one of the evaluation set, all 20 drawings
    rows = list(range(0, 40)) + list(range(19280, 19300))
    _png_tree(tmp_path / "release", arrays105, rows)
    _zip_split(tmp_path / "release", "images_evaluation")  # the release ships zips
    out28 = prepare_omniglot(tmp_path / "release", tmp_path / "o28.npz")
    out105 = subprocess.run([sys.executable, "-m", "hypermeta", "data", "prepare", "omniglot",
                             str(tmp_path / "release"), str(tmp_path / "o105.npz"), "--option",
                             "size=105"], capture_output=True, text=True)
    assert out105.returncode == 0, out105.stderr
    with np.load(folder / "omniglot.npz") as data:
        shipped28 = {k: data[k][rows] for k in data.files}
    with np.load(out28) as made28, np.load(tmp_path / "o105.npz") as made105:
        assert np.array_equal(made105["images"], arrays105["images"][rows])
        for key in ("images", "split", "alphabet", "character", "drawer", "char_id", "path"):
            assert np.array_equal(made28[key], shipped28[key]), key
        # labels run 0.. in traversal order; the shipped ones are global ids in the same order
        assert np.array_equal(np.unique(made28["label"], return_inverse=True)[1],
                              np.unique(shipped28["label"], return_inverse=True)[1])


@needs_data
def test_omniglot_is_a_registered_family_for_configs():
    from hypermeta.config import RunConfig
    from hypermeta.runs import build_tasks

    config = RunConfig.from_file(Path(__file__).resolve().parents[1] / "configs"
                                 / "omniglot_hypernet_film.yaml")
    tasks = build_tasks(config)
    assert tasks.name == "omniglot" and tasks.kind.name == "classification"
    assert tasks.x_shape == (1, 28, 28) and tasks.out_dim == 20


@needs_data
def test_chosen_alphabets_and_class_lists_are_config_and_recorded_as_provenance(tmp_path):
    from hypermeta import get_tasks

    full = get_tasks("omniglot", data_dir=DATA, ways=5, shots=1, queries=1)
    latin = get_tasks("omniglot", data_dir=DATA, ways=5, shots=1, queries=1,
                      alphabets=["Latin", "Greek"])
    assert 0 < len(latin.classes["train"]) < len(full.classes["train"])
    assert full.provenance()["data_sha256"] == latin.provenance()["data_sha256"]
    assert full.provenance()["classes_sha256"] != latin.provenance()["classes_sha256"]
    # explicit class-list files replace a split's list, and their digest follows the content
    lines = read_split(DATA, "test")[:40]
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    mine = get_tasks("omniglot", data_dir=DATA, ways=5, shots=1, queries=1,
                     class_lists={"test": str(tmp_path / "test.txt")})
    assert len(mine.classes["test"]) == 40
    assert mine.provenance()["classes_sha256"]["train"] == \
        full.provenance()["classes_sha256"]["train"]
    assert mine.provenance()["classes_sha256"]["test"] != \
        full.provenance()["classes_sha256"]["test"]
    with pytest.raises(ValueError, match=r"alphabets \['Klingon'\] are not in Omniglot"):
        get_tasks("omniglot", data_dir=DATA, alphabets=["Klingon"])
    with pytest.raises(ValueError, match="class_lists takes the splits"):
        get_tasks("omniglot", data_dir=DATA, class_lists={"dev": "x.txt"})


@needs_data
def test_eval_refuses_a_run_whose_class_lists_changed(tmp_path):
    from hypermeta import RunConfig, fit, load_run

    alphabets = sorted({read_split(DATA, split)[0].split("/")[0]
                        for split in ("train", "val", "test")})  # one of each split
    config = RunConfig.from_dict({
        "method": "protonet", "tasks": {"name": "omniglot", "data_dir": DATA, "ways": 5,
                                        "shots": 1, "queries": 1, "alphabets": alphabets},
        "target": {"name": "conv4", "hidden": 8},
        "train": {"steps": 1, "meta_batch": 1, "val_every": 1, "val_tasks": 2}})
    data = tmp_path / "data"
    (data / "omniglot" / "splits" / "vinyals").mkdir(parents=True)
    for name in ("omniglot.npz", "omniglot105.npz"):
        (data / "omniglot" / name).symlink_to(Path(DATA) / "omniglot" / name)
    for name in ("train", "val", "test", "trainval"):
        (data / "omniglot" / "splits" / "vinyals" / f"{name}.txt").write_text(
            "\n".join(read_split(DATA, name)) + "\n")
    config = RunConfig.from_dict({**config.model_dump(),
                                  "tasks": {**config.tasks.model_dump(), "data_dir": str(data)}})
    fit(config, tmp_path / "run")
    assert load_run(tmp_path / "run").provenance["classes_sha256"]
    test_list = data / "omniglot" / "splits" / "vinyals" / "test.txt"
    test_list.write_text("\n".join(read_split(DATA, "test")[4:]) + "\n")  # drop a character
    with pytest.raises(ValueError, match=r"trained on other data.*classes_sha256"):
        load_run(tmp_path / "run")
    assert load_run(tmp_path / "run", allow_data_change=True).provenance != {}


def _episode_tree(root: Path, images: dict[str, list[Path]], shots: int) -> None:
    """One episode folder: the first ``shots`` images of each class in support, the rest in
    query."""
    for cls, files in images.items():
        for part, chosen in (("support", files[:shots]), ("query", files[shots:])):
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, root / part / cls / f.name)


@needs_data
def test_your_own_episode_files_get_the_shipped_preprocessing_and_evaluate(tmp_path):
    from hypermeta import RunConfig, fit
    from hypermeta.tasks.omniglot import omniglot_episodes, omniglot_input

    folder = Path(DATA) / "omniglot"
    with np.load(folder / "omniglot105.npz") as data:
        arrays105 = {k: data[k] for k in ("images", "path")}
    with np.load(folder / "omniglot.npz") as data:
        shipped28 = data["images"]
    rows = list(range(19280, 19280 + 100))  # five evaluation characters, 20 drawings each
    _png_tree(tmp_path / "release", arrays105, rows)
    files = [tmp_path / "release" / str(arrays105["path"][r]) for r in rows]
    for row, path in zip(rows[:5], files[:5]):  # the one public helper == the shipped data
        expected = torch.from_numpy(shipped28[row].astype(np.float32) / 255)[None]
        assert torch.equal(omniglot_input(path), expected)
    by_class = {f"c{c}": files[20 * c: 20 * c + 3] for c in range(5)}
    _episode_tree(tmp_path / "episodes" / "e0", by_class, shots=1)
    _episode_tree(tmp_path / "episodes" / "e1", {k: v[::-1] for k, v in by_class.items()}, 1)
    episodes = omniglot_episodes(tmp_path / "episodes")
    assert episodes.support_x.shape == (2, 5, 1, 28, 28)
    assert episodes.query_x.shape == (2, 10, 1, 28, 28)
    assert episodes.support_y[0].tolist() == [0, 1, 2, 3, 4]
    listing = {"episodes": [{part: {c: [str(p.relative_to(tmp_path)) for p in sorted(
        (tmp_path / "episodes" / e / part / c).iterdir())] for c in by_class}
        for part in ("support", "query")} for e in ("e0", "e1")]}
    (tmp_path / "list.json").write_text(__import__("json").dumps(listing))
    listed = omniglot_episodes(tmp_path / "list.json")
    assert torch.equal(listed.support_x, episodes.support_x)
    assert torch.equal(listed.query_y, episodes.query_y)
    config = RunConfig.from_dict({
        "method": "protonet", "tasks": {"name": "omniglot", "data_dir": DATA, "ways": 5,
                                        "shots": 1, "queries": 1},
        "target": {"name": "conv4", "hidden": 8},
        "train": {"steps": 1, "meta_batch": 1, "val_every": 1, "val_tasks": 2}})
    fit(config, tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "hypermeta", "eval", str(tmp_path / "run"),
                           "--episodes", str(tmp_path / "episodes")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "2 files tasks" in done.stdout
    assert (tmp_path / "run" / "eval-files-best.json").is_file()


def test_bad_episode_files_are_clear_errors(tmp_path):
    from hypermeta.tasks.omniglot import omniglot_episodes, omniglot_input

    rng = np.random.default_rng(0)
    pictures = []
    for i in range(8):
        path = tmp_path / "pics" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((105, 105)) > 0.1).astype(np.uint8) * 255).save(path)
        pictures.append(path)
    x = omniglot_input(pictures[0])
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    _episode_tree(tmp_path / "uneven" / "e0", {"a": pictures[:3], "b": pictures[3:5]}, 1)
    with pytest.raises(ValueError, match="e0: every class needs the same number"):
        omniglot_episodes(tmp_path / "uneven")
    _episode_tree(tmp_path / "mixed" / "e0", {"a": pictures[:2], "b": pictures[2:4]}, 1)
    _episode_tree(tmp_path / "mixed" / "e1", {"a": pictures[:3], "b": pictures[3:6]}, 2)
    with pytest.raises(ValueError, match="e1: 2-way 2-shot .* unlike the episodes before"):
        omniglot_episodes(tmp_path / "mixed")
    (tmp_path / "classes" / "e0" / "support" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "e0" / "query" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="same classes"):
        omniglot_episodes(tmp_path / "classes")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        omniglot_input(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        omniglot_episodes(tmp_path / "nothing")
