"""Omniglot (Lake et al. 2015): loading the compact npz, the Vinyals et al. (2016) class splits
with rotations, and building the npz from the original release (``prepare_omniglot``).

The data is never downloaded: pass its folder (``data_dir``) or set ``HYPERMETA_DATA``. The folder
may be the one holding ``omniglot/`` or ``omniglot/`` itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hypermeta.tasks.arrays import LabeledArrayTasks

NUM_IMAGES = 32_460
NUM_CHARACTERS = 1623
FILES = {28: "omniglot.npz", 105: "omniglot105.npz"}
ARRAYS = ("images", "split", "alphabet", "character", "drawer", "char_id", "label", "path")
RELEASE_SPLITS = ("images_background", "images_evaluation")


def omniglot_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding the Omniglot files, from ``data_dir`` or ``$HYPERMETA_DATA``."""
    root = data_dir if data_dir is not None else os.environ.get("HYPERMETA_DATA")
    if root is None:
        raise FileNotFoundError("no Omniglot location: pass --data-dir (data_dir=) or set "
                                "HYPERMETA_DATA to the folder that holds omniglot/")
    root = Path(root)
    for candidate in (root / "omniglot", root):
        if (candidate / FILES[28]).is_file() or (candidate / FILES[105]).is_file():
            return candidate
    raise FileNotFoundError(f"{root} holds neither omniglot/{FILES[28]} nor {FILES[28]}; build "
                            "it with `hypermeta data prepare omniglot SOURCE OUT.npz`")


@dataclass(frozen=True)
class OmniglotArrays:
    """The arrays of one Omniglot npz (ink = 255, background = 0)."""

    images: np.ndarray  # (N, S, S) uint8
    alphabet: np.ndarray  # (N,) str
    character: np.ndarray  # (N,) 1-based character number within the alphabet
    label: np.ndarray  # (N,) 0..1622, 20 rows per class in drawer order


def load_omniglot(data_dir: str | Path | None = None, *, size: Literal[28, 105] = 28,
                  binarize: bool = False) -> OmniglotArrays:
    """Load and check ``omniglot.npz`` (28x28 grey) or ``omniglot105.npz`` (original 105x105).

    Arguments:
        data_dir: see ``omniglot_dir``.
        size: 28 (default, LANCZOS-resized grey levels) or 105 (the original binary images).
        binarize: threshold at 128, giving the binary images of the MAML-era 28x28 releases
            (ink 255, background 0; those releases resized the 1-bit images with
            nearest-neighbour sampling, so this is close to, not identical with, them).
    """
    if size not in FILES:
        raise ValueError(f"size must be 28 or 105, got {size!r}")
    path = omniglot_dir(data_dir) / FILES[size]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is not a readable npz file ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a readable npz file (a single array)")
    with data:
        missing = [k for k in ARRAYS if k not in data.files]
        if missing:
            raise ValueError(f"{path} lacks arrays {missing}")
        try:
            arrays = {k: data[k] for k in ("images", "alphabet", "character", "label")}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{path} is truncated or corrupted ({err})") from None
    images, label = arrays["images"], arrays["label"]
    problems = []
    if images.dtype != np.uint8 or images.shape != (NUM_IMAGES, size, size):
        problems.append(f"images must be uint8 of shape ({NUM_IMAGES}, {size}, {size}); got "
                        f"{images.dtype} {images.shape}")
    if label.shape != (NUM_IMAGES,) or label.min() != 0 or label.max() != NUM_CHARACTERS - 1:
        problems.append(f"label must hold {NUM_IMAGES} ids 0..{NUM_CHARACTERS - 1}")
    elif not np.array_equal(np.bincount(label), np.full(NUM_CHARACTERS, 20)):
        problems.append("every character must have exactly 20 images")
    if problems:
        raise ValueError(f"{path} is not the Omniglot npz: " + "; ".join(problems))
    if binarize:
        images = np.where(images >= 128, 255, 0).astype(np.uint8)
    return OmniglotArrays(images, arrays["alphabet"], arrays["character"], label)


def split_file(data_dir: str | Path | None, name: str, splits: str = "vinyals") -> Path:
    """``splits/{splits}/{name}.txt`` in the Omniglot folder."""
    return omniglot_dir(data_dir) / "splits" / splits / f"{name}.txt"


def read_split(data_dir: str | Path | None, name: str, splits: str = "vinyals", *,
               path: str | Path | None = None) -> list[str]:
    """Lines ``Alphabet/characterNN/rotDDD`` of ``splits/{splits}/{name}.txt`` (or ``path``)."""
    file = Path(path) if path is not None else split_file(data_dir, name, splits)
    if not file.is_file():
        raise FileNotFoundError(f"split list {file} is missing")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_lines(lines: list[str]) -> str:
    """sha256 of a class list (one name per line, in order)."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def omniglot_tasks(data_dir: str | None = None, *, ways: int = 5, shots: int = 1,
                   queries: int = 15, train_on: Literal["train", "trainval"] = "train",
                   binarize: bool = False, splits: str = "vinyals",
                   class_lists: dict[str, str] | None = None,
                   alphabets: list[str] | None = None) -> LabeledArrayTasks:
    """N-way K-shot Omniglot episodes on the Vinyals et al. (2016) protocol.

    Classes are (character, rotation) pairs: each character's 0/90/180/270 degree rotations are
    four classes. ``train`` = the 1028 train characters (x4), ``val`` = 172, ``test`` = 423;
    ``train_on="trainval"`` trains on all 1200 (then there is no separate val split). Images are
    1x28x28 floats in [0, 1], ink = 1.

    Arguments:
        data_dir: the folder holding ``omniglot/`` (default ``$HYPERMETA_DATA``).
        ways, shots, queries: N, K and the query images per class.
        train_on: ``"train"`` or ``"trainval"`` (the list the train split reads).
        binarize: threshold the grey images at 128.
        splits: the folder of class lists under ``omniglot/splits/`` (``"vinyals"``).
        class_lists: explicit list files ``{"train": path, "val": path, "test": path}``
            replacing those of ``splits`` (a split left out reads its ``splits`` list).
        alphabets: keep only classes of these alphabets, in every split.

    The data file's and every class list's sha256 are the source's ``provenance()``, recorded
    in checkpoints so that evaluating against other data is refused.
    """
    if train_on not in ("train", "trainval"):
        raise ValueError(f"train_on must be 'train' or 'trainval', got {train_on!r}")
    explicit: Mapping[str, str] = class_lists or {}
    unknown = sorted(set(explicit) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"class_lists takes the splits train, val and test; got {unknown}")
    arrays = load_omniglot(data_dir, binarize=binarize)
    rows_of = {f"{a}/character{c:02d}": np.flatnonzero(arrays.label == label)
               for a, c, label in zip(arrays.alphabet[::20], arrays.character[::20],
                                      arrays.label[::20])}
    files = {"train": train_on, "val": "val", "test": "test"}
    lists = {split: read_split(data_dir, name, splits, path=explicit.get(split))
             for split, name in files.items()
             if not (split == "val" and train_on == "trainval" and "val" not in explicit)}
    lists.setdefault("val", [])
    if alphabets is not None:
        known = {str(a) for a in arrays.alphabet}
        missing = sorted(set(alphabets) - known)
        if missing:
            raise ValueError(f"alphabets {missing} are not in Omniglot")
        keep = set(alphabets)
        lists = {split: [line for line in lines if line.split("/")[0] in keep]
                 for split, lines in lists.items()}
    provenance: dict[str, Any] = {
        "data_sha256": sha256_file(omniglot_dir(data_dir) / FILES[28]),
        "classes_sha256": {split: sha256_lines(lines) for split, lines in lists.items()},
    }
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    classes: dict[str, list[int]] = {}
    for split, lines in lists.items():
        ids = []
        for line in lines:
            key, _, rotation = line.rpartition("/")
            if key not in rows_of or not rotation.startswith("rot"):
                raise ValueError(f"split line {line!r} names no Omniglot character")
            class_id = len(images)
            picture = arrays.images[rows_of[key]]  # (20, 28, 28)
            images.append(np.rot90(picture, k=int(rotation[3:]) // 90, axes=(1, 2)))
            labels.append(np.full(len(picture), class_id))
            ids.append(class_id)
        classes[split] = ids
    x = np.concatenate(images)[:, None]  # (classes * 20, 1, 28, 28) uint8
    source = LabeledArrayTasks(x, np.concatenate(labels), ways=ways, shots=shots,
                               queries=queries, classes=classes, name="omniglot",
                               x_scale=1 / 255, provenance=provenance)
    return source


# ------------------------------------------------------------------- building the npz
def _release_files(source: Path) -> list[tuple[str, bytes]]:
    """``(relative path, PNG bytes)`` of the original release under ``source``: the
    ``images_background``/``images_evaluation`` folders or their zips, in recipe order."""
    found: list[tuple[str, bytes]] = []
    for split in RELEASE_SPLITS:
        folder, archive = source / split, source / f"{split}.zip"
        if folder.is_dir():
            for path in folder.rglob("*.png"):
                found.append((path.relative_to(source).as_posix(), path.read_bytes()))
        elif archive.is_file():
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.filename.endswith(".png"):
                        found.append((info.filename, zf.read(info)))
        else:
            raise FileNotFoundError(f"{source} holds neither {split}/ nor {split}.zip")
    # recipe order: split, then alphabet, character, file name, each sorted as plain strings
    return sorted(found, key=lambda item: (RELEASE_SPLITS.index(item[0].split("/")[0]),
                                           item[0].split("/")[1:]))


def prepare_omniglot(source: str | Path, out: str | Path, *,
                     size: Literal[28, 105] = 28) -> Path:
    """Build ``omniglot.npz`` (``size=28``) or ``omniglot105.npz`` from the original release,
    following the recipe of the shipped files (invert to ink = 255; 28x28 by Pillow LANCZOS on
    the 8-bit image). Written atomically."""
    from hypermeta.files import atomic_write_bytes

    if size not in FILES:
        raise ValueError(f"size must be 28 or 105, got {size!r}")
    files = _release_files(Path(source))
    if not files:
        raise ValueError(f"no PNG files under {source}")
    meta: dict[str, list[object]] = {k: [] for k in ARRAYS if k != "images"}
    images: list[np.ndarray] = []
    seen: dict[tuple[str, str, str], int] = {}
    for rel, data in files:
        parts = rel.split("/")
        if len(parts) != 4:
            raise ValueError(f"unexpected path {rel!r}: want SPLIT/ALPHABET/characterNN/FILE.png")
        split, alphabet, character, name = parts
        images.append(omniglot_pixels(data, size=size))
        stem = name.removesuffix(".png")
        key = (split, alphabet, character)
        seen.setdefault(key, len(seen))
        meta["split"].append(split.removeprefix("images_"))
        meta["alphabet"].append(alphabet)
        meta["character"].append(int(character.removeprefix("character")))
        meta["drawer"].append(int(stem.split("_")[1]))
        meta["char_id"].append(int(stem.split("_")[0]))
        meta["label"].append(seen[key])
        meta["path"].append(rel)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, images=np.stack(images), split=np.array(meta["split"]),
        alphabet=np.array(meta["alphabet"]),
        character=np.array(meta["character"], dtype=np.int16),
        drawer=np.array(meta["drawer"], dtype=np.int8),
        char_id=np.array(meta["char_id"], dtype=np.int16),
        label=np.array(meta["label"], dtype=np.int16), path=np.array(meta["path"]))
    return atomic_write_bytes(out, buffer.getvalue())


# ------------------------------------------------------------------ a user's own images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def omniglot_pixels(image: str | Path | bytes, *, size: Literal[28, 105] = 28) -> np.ndarray:
    """One image as the shipped npz stores it: ``uint8 [size, size]``, ink = 255.

    The recipe of ``prepare_omniglot``: grey levels, inverted (Omniglot draws dark strokes on
    a light background), then resized with Pillow's LANCZOS on the 8-bit image when the image
    is not already ``size`` x ``size`` (the release is 105 x 105). ``image``: a file path or
    the file's bytes (PNG, or any format Pillow reads).
    """
    from PIL import Image, UnidentifiedImageError

    if size not in FILES:
        raise ValueError(f"size must be 28 or 105, got {size!r}")
    try:
        opened = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
        grey = opened.convert("L")
    except (OSError, UnidentifiedImageError) as err:
        where = "image bytes" if isinstance(image, bytes) else f"image {image}"
        raise ValueError(f"{where} is not a readable image ({err})") from None
    inverted = Image.fromarray(255 - np.asarray(grey, dtype=np.uint8))
    if inverted.size != (size, size):
        inverted = inverted.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(inverted, dtype=np.uint8)


def omniglot_input(image: str | Path | bytes, *, binarize: bool = False) -> Any:
    """The model's input for one image: a float tensor ``[1, 28, 28]`` in [0, 1], ink = 1 —
    exactly what ``omniglot_tasks`` feeds a model for a shipped image (``binarize`` as the
    run's ``tasks.binarize``)."""
    import torch

    pixels = omniglot_pixels(image)
    if binarize:
        pixels = np.where(pixels >= 128, 255, 0).astype(np.uint8)
    return torch.from_numpy(pixels.astype(np.float32) / 255)[None]


def _listed(root: Path, label: str) -> dict[str, list[Path]]:
    """{class: image files} of ``root/<class>/*`` (hidden names ignored)."""
    if not root.is_dir():
        raise ValueError(f"{label}: {root} is not a folder of class folders")
    classes = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                              and not f.name.startswith("."))
               for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    return classes


def omniglot_episodes(path: str | Path, *, binarize: bool = False) -> Any:
    """Fixed episodes a user supplies, as one ``Episode`` ``[T, N*K, 1, 28, 28]``.

    ``path`` is either a folder with one sub-folder per episode, each holding
    ``support/<class>/<images>`` and ``query/<class>/<images>``, or a JSON file
    ``{"episodes": [{"support": {"<class>": ["img.png", ...]}, "query": {...}}, ...]}`` whose
    image paths are relative to the JSON file. Within an episode the sorted class names are
    labels 0..N-1; support and query must name the same classes; every episode must have the
    same ways, shots (images per class in support) and queries per class, so they run as one
    batch. Images go through ``omniglot_input``.
    """
    import json

    import torch

    from hypermeta.episodes import Episode

    path = Path(path)
    listed: list[tuple[str, dict[str, list[Path]], dict[str, list[Path]]]] = []
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
            entries = data["episodes"]
            assert isinstance(entries, list)
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
            raise ValueError(f"{path} must hold {{\"episodes\": [{{\"support\": {{class: "
                             "[images]}, \"query\": {class: [images]}}, ...]}") from None
        for i, entry in enumerate(entries):
            try:
                sets = [{str(c): [path.parent / str(f) for f in files]
                         for c, files in sorted(entry[part].items())}
                        for part in ("support", "query")]
            except (KeyError, AttributeError, TypeError):
                raise ValueError(f"{path}: episode {i} needs 'support' and 'query' mappings "
                                 "of class name -> list of image paths") from None
            listed.append((f"episode {i}", sets[0], sets[1]))
    elif path.is_dir():
        for folder in sorted(d for d in path.iterdir() if d.is_dir()
                             and not d.name.startswith(".")):
            listed.append((folder.name, _listed(folder / "support", folder.name),
                           _listed(folder / "query", folder.name)))
    else:
        raise FileNotFoundError(f"{path} is neither a folder of episode folders nor a .json "
                                "episode list")
    if not listed:
        raise ValueError(f"{path} holds no episodes")
    shape: tuple[int, int, int] | None = None
    xs: list[Any] = []
    ys: list[Any] = []
    qxs: list[Any] = []
    qys: list[Any] = []
    for name, support, query in listed:
        if not support or sorted(support) != sorted(query):
            raise ValueError(f"{name}: support and query must name the same classes (support "
                             f"{sorted(support)}, query {sorted(query)})")
        shots = {len(f) for f in support.values()}
        queries = {len(f) for f in query.values()}
        if len(shots) != 1 or len(queries) != 1 or 0 in shots | queries:
            raise ValueError(f"{name}: every class needs the same number (>= 1) of support "
                             f"and of query images; got support "
                             f"{ {c: len(f) for c, f in support.items()} }, query "
                             f"{ {c: len(f) for c, f in query.items()} }")
        this = (len(support), shots.pop(), queries.pop())
        if shape is not None and this != shape:
            raise ValueError(f"{name}: {this[0]}-way {this[1]}-shot with {this[2]} queries per "
                             f"class, unlike the episodes before ({shape[0]}-way {shape[1]}-shot"
                             f", {shape[2]} queries): supply one kind of episode per call")
        shape = this
        for files, x_out, y_out in ((support, xs, ys), (query, qxs, qys)):
            images = [omniglot_input(f, binarize=binarize) for c in sorted(files)
                      for f in files[c]]
            labels = [label for label, c in enumerate(sorted(files)) for _ in files[c]]
            x_out.append(torch.stack(images))
            y_out.append(torch.tensor(labels))
    return Episode(torch.stack(xs), torch.stack(ys), torch.stack(qxs), torch.stack(qys))
