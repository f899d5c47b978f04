"""Your own labelled files as N-way K-shot tasks: one folder per class (``root/<class>/<files>``).

Declared in YAML, no code::

    tasks: {name: folder, root: path/to/your/data, ways: 5, shots: 1, queries: 5,
            fractions: [0.6, 0.2, 0.2], seed: 0}

The file type is read from the extensions, one type per data set:

- images (``.png .jpg .jpeg .bmp .gif``): grey (``channels: 1``) or RGB (``channels: 3``),
  resized to ``image_size`` x ``image_size`` with LANCZOS; x ``[C, H, W]`` floats in [0, 1].
- audio (``.wav``, mono 16-bit PCM): resampled to ``sample_rate``, then cut or zero-padded at
  the end to ``audio_samples``; x ``[audio_samples]`` floats in [-1, 1].
- text (``.txt``, one example per file): a hashed bag of words; x ``[text_features]``, the
  L2-normalised counts of the lowercase word tokens, each in bucket
  ``stable_hash(token) % text_features``.

Classes, not files, are split into train/val/test (``classes:`` lists, or ``fractions`` of the
sorted class names shuffled by ``seed``). Hidden files and folders (names starting with ``.``)
and files directly in ``root`` are ignored; any other file of an unknown type is an error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hypermeta.encoders import stable_hash
from hypermeta.tasks.arrays import LabeledArrayTasks, split_classes
from hypermeta.tasks.base import SPLITS
from hypermeta.tasks.omniglot import sha256_lines

log = logging.getLogger(__name__)

FILE_TYPES: dict[str, str] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp", ".gif"), "image"),
    ".wav": "audio",
    ".txt": "text",
}
WORD = re.compile(r"\w+")  # word tokens (Unicode letters, digits, underscore)


# ----------------------------------------------------------------------------- class splits
def resolve_split(names: Sequence[str], declared: Mapping[str, Sequence[str | int]] | None,
                  fractions: Sequence[float], seed: int, *, what: str) -> dict[str, list[str]]:
    """The train/val/test lists of ``names`` (classes or tasks): as ``declared``, or the
    ``fractions`` of the sorted names shuffled by ``seed`` (the permutation of
    ``LabeledArrayTasks``, so a folder split equals an array split of the same classes).

    Arguments:
        names: every name found in the data.
        declared: explicit ``{"train": [...], "val": [...], "test": [...]}`` (each list is
            sorted); a split left out is empty. Unknown split keys, names absent from the data
            and names in two splits are a ``ValueError``.
        fractions: train/val/test shares when ``declared`` is None.
        seed: seed of the shuffle when ``declared`` is None.
        what: the plural noun for messages (``"classes"``, ``"tasks"``).

    Example:
        >>> resolve_split(["a", "b", "c"], None, (1 / 3, 1 / 3, 1 / 3), 0, what="classes")
        {'train': [...], 'val': [...], 'test': [...]}
    """
    ordered = sorted(names)
    if declared is None:
        ids = split_classes(list(range(len(ordered))),
                                               tuple(fractions),  # type: ignore[arg-type]
                                               seed)
        return {split: [ordered[i] for i in ids[split]] for split in SPLITS}
    problems = []
    unknown_keys = sorted(set(declared) - set(SPLITS))
    if unknown_keys:
        problems.append(f"splits are named {list(SPLITS)}, got {unknown_keys}")
    # sorted: a split is a set of names (its digest and its episodes do not depend on order)
    split: dict[str, list[str]] = {s: sorted(str(n) for n in declared.get(s, []))
                                   for s in SPLITS}
    known = set(ordered)
    for s in SPLITS:
        missing = [n for n in split[s] if n not in known]
        if missing:
            problems.append(f"{s} names {what} not in the data: {missing[:10]} (found: "
                            f"{ordered[:10]}{' ...' if len(ordered) > 10 else ''})")
        repeated = sorted({n for n in split[s] if split[s].count(n) > 1})
        if repeated:
            problems.append(f"{s} lists {what} {repeated[:10]} more than once")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            both = sorted(set(split[a]) & set(split[b]))
            if both:
                problems.append(f"{a} and {b} share {what} {both[:10]}; splits must be disjoint")
    if not split["train"]:
        problems.append(f"train lists no {what}")
    if problems:
        raise ValueError(f"{what} split: " + "; ".join(problems))
    return split


# ----------------------------------------------------------------------------- file decoding
def decode_image(data: bytes, *, channels: int, size: int) -> np.ndarray:
    """Image file bytes -> ``[C, size, size]`` uint8 (Pillow: ``L`` or ``RGB``, LANCZOS)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)  # the first frame of an animated GIF
        converted = image.convert("L" if channels == 1 else "RGB")
        resized = converted.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(resized, dtype=np.uint8)  # (H, W) or (H, W, 3)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def decode_wav(data: bytes, *, samples: int, sample_rate: int) -> np.ndarray:
    """Mono 16-bit PCM WAV bytes -> ``[samples]`` float32 in [-1, 1].

    Other rates are resampled to ``sample_rate`` by linear interpolation (no anti-alias filter:
    good enough for features, not for listening); the clip is then cut to its first ``samples``
    values or zero-padded at the end.
    """
    with wave.open(io.BytesIO(data), "rb") as reader:
        if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
            raise ValueError(f"need mono 16-bit PCM; got {reader.getnchannels()} channel(s) of "
                             f"{8 * reader.getsampwidth()} bits")
        rate = reader.getframerate()
        frames = reader.readframes(reader.getnframes())
    wav = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0  # (n,) in [-1, 1)
    if rate != sample_rate and len(wav) > 1:
        length = max(1, round(len(wav) * sample_rate / rate))
        times = np.arange(length) * (rate / sample_rate)  # positions in input samples
        wav = np.interp(times, np.arange(len(wav)), wav).astype(np.float32)
    out = np.zeros(samples, dtype=np.float32)
    out[: min(samples, len(wav))] = wav[:samples]
    return out


def bag_of_words(text: str, width: int) -> np.ndarray:
    """A hashed bag of words: ``[width]`` float32, the L2-normalised counts of the lowercase
    word tokens of ``text``, token ``w`` counted in bucket ``stable_hash(w) % width`` (all zero
    for a text without words).

    Example:
        >>> bag_of_words("The cat saw the dog", 256).shape
        (256,)
    """
    counts = np.zeros(width, dtype=np.float32)
    for token in WORD.findall(text.lower()):
        counts[stable_hash(token) % width] += 1
    norm = float(np.linalg.norm(counts))
    return counts / norm if norm > 0 else counts


# ----------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class FolderScan:
    """The class folders under a root and their example files (sorted, relative posix paths)."""

    root: Path
    files: dict[str, list[str]]  # class name -> paths relative to root
    file_type: str | None  # "image" | "audio" | "text"; None when there is no file at all


def scan_folder(root: str | Path) -> FolderScan:
    """Find the classes (sub-folders of ``root``) and their files, checking the file types.

    Raises ``FileNotFoundError`` when ``root`` is not a folder and ``ValueError`` for files of
    unknown or mixed types, naming them.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"folder data root {str(root)!r} is not a folder; want "
                                "root/<class name>/<files>")
    files: dict[str, list[str]] = {}
    unknown: list[str] = []
    types: dict[str, list[str]] = {}  # file type -> example paths, for the mixed-type message
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = []
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(base)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            file_type = FILE_TYPES.get(path.suffix.lower())
            if file_type is None:
                unknown.append(rel.as_posix())
                continue
            types.setdefault(file_type, []).append(rel.as_posix())
            found.append(rel.as_posix())
        files[folder.name] = found
    if unknown:
        raise ValueError(f"{len(unknown)} file(s) under {base} of unknown type, e.g. "
                         f"{unknown[:5]}; known extensions: {sorted(FILE_TYPES)} (remove or "
                         "hide them, prefixing '.')")
    if len(types) > 1:
        examples = "; ".join(f"{t}: {paths[0]}" for t, paths in sorted(types.items()))
        raise ValueError(f"{base} mixes file types {sorted(types)} ({examples}); a folder data "
                         "set holds one type (images, .wav audio or .txt text)")
    return FolderScan(base, files, next(iter(types), None))


# ----------------------------------------------------------------------------- the family
def folder_tasks(*, root: str, ways: int = 5, shots: int = 1, queries: int = 5,
                 image_size: int = 28, channels: Literal[1, 3] = 1,
                 audio_samples: int = 16_000, sample_rate: int = 16_000,
                 text_features: int = 256, classes: dict[str, list[str | int]] | None = None,
                 fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                 seed: int = 0) -> LabeledArrayTasks:
    """N-way K-shot classification over your own files, one folder per class.

    Arguments:
        root: the folder holding one sub-folder per class (``root/<class name>/<files>``).
        ways, shots, queries: N, K and the query examples per class of an episode.
        image_size: images are resized to ``image_size`` x ``image_size``.
        channels: 1 (grey, ``L``) or 3 (``RGB``) image channels.
        audio_samples: length of every audio example after resampling (cut or zero-padded).
        sample_rate: the rate audio is resampled to before cutting/padding.
        text_features: width of the hashed bag-of-words vector of a text file.
        classes: explicit class-disjoint split ``{"train": [...], "val": [...],
            "test": [...]}`` of class (folder) names (numbers are read as names, so
            ``[0, 1]`` names the folders ``0`` and ``1``); a split left out is empty.
        fractions: train/val/test shares of the classes when ``classes`` is not given.
        seed: seed of the class shuffle when ``classes`` is not given.

    Returns:
        a ``LabeledArrayTasks`` named ``"folder"`` whose ``provenance()`` holds the sha256 of
        the files read (``data_sha256``: relative paths and bytes) and of each split's class
        names (``classes_sha256``), recorded in checkpoints.

    Example:
        >>> tasks = folder_tasks(root="data/birds", ways=5, shots=1, image_size=32, channels=3)
        >>> episode = tasks.sample("train", 4, torch.Generator().manual_seed(0))
        >>> episode.support_x.shape
        torch.Size([4, 5, 3, 32, 32])
    """
    problems = []
    if channels not in (1, 3):
        problems.append(f"channels must be 1 or 3, got {channels!r}")
    for option, value in (("image_size", image_size), ("audio_samples", audio_samples),
                          ("sample_rate", sample_rate), ("text_features", text_features)):
        if value < 1:
            problems.append(f"{option} must be >= 1, got {value}")
    if min(ways, shots, queries) < 1:
        problems.append(f"ways, shots and queries must be >= 1; got {ways}, {shots}, {queries}")
    if problems:
        raise ValueError("folder tasks: " + "; ".join(problems))
    scan = scan_folder(root)
    if not scan.files:
        raise ValueError(f"{scan.root} holds no class folders; want root/<class name>/<files>")
    split = resolve_split(list(scan.files), classes, fractions, seed, what="classes")
    used = sorted({name for names in split.values() for name in names})
    _check_counts(scan, split, ways, shots + queries)
    # read each used file once: its bytes feed both the digest and the decoder
    decode = _decoder(scan.file_type, channels=channels, image_size=image_size,
                      audio_samples=audio_samples, sample_rate=sample_rate,
                      text_width=text_features)
    rows: list[np.ndarray] = []
    labels: list[int] = []
    digest_lines: list[str] = []
    class_id = {name: i for i, name in enumerate(used)}
    for name in used:
        for rel in scan.files[name]:
            data = (scan.root / rel).read_bytes()
            digest_lines.append(f"{rel}\t{hashlib.sha256(data).hexdigest()}")
            try:
                rows.append(decode(data))
            except Exception as err:  # Pillow, wave and UTF-8 each raise their own types
                raise ValueError(f"cannot read {scan.root / rel} as {scan.file_type}: "
                                 f"{err}") from None
            labels.append(class_id[name])
    x = np.stack(rows)  # (N, C, H, W) uint8 | (N, audio_samples) | (N, text_features) float32
    provenance: dict[str, Any] = {
        "data_sha256": sha256_lines(sorted(digest_lines)),
        "classes_sha256": {s: sha256_lines(split[s]) for s in SPLITS},
    }
    log.info("folder tasks: %d %s files in %d classes under %s (train %d, val %d, test %d)",
             len(rows), scan.file_type, len(used), scan.root, len(split["train"]),
             len(split["val"]), len(split["test"]))
    source = LabeledArrayTasks(
        x, np.asarray(labels, dtype=np.int64), ways=ways, shots=shots, queries=queries,
        classes={s: [class_id[n] for n in split[s]] for s in SPLITS}, name="folder",
        x_scale=1 / 255 if scan.file_type == "image" else 1.0, provenance=provenance)
    if scan.file_type == "text":  # served models take the texts themselves over HTTP
        source.input_format = "text"
        source.encode_text = lambda texts: torch.as_tensor(  # type: ignore[attr-defined]
            np.stack([bag_of_words(t, text_features) for t in texts]))
    return source


def _check_counts(scan: FolderScan, split: dict[str, list[str]], ways: int,
                  per_class: int) -> None:
    """Every split used has ``ways`` classes of ``shots + queries`` files (named errors)."""
    problems = []
    for s in SPLITS:
        members = split[s]
        if 0 < len(members) < ways or (s == "train" and not members):
            problems.append(f"{s} has {len(members)} class(es) {members[:10]}, fewer than "
                            f"ways={ways}")
        small = [f"{n} ({len(scan.files[n])})" for n in members
                 if len(scan.files[n]) < per_class]
        if small:
            problems.append(f"{s} classes with fewer than shots + queries = {per_class} files: "
                            f"{small[:10]}")
    if problems:
        raise ValueError(f"folder tasks under {scan.root}: " + "; ".join(problems)
                         + " (add files or classes, lower ways/shots/queries, or declare the "
                         "split with classes:)")


def _decoder(file_type: str | None, *, channels: int, image_size: int, audio_samples: int,
             sample_rate: int, text_width: int) -> Callable[[bytes], np.ndarray]:
    """The bytes -> example array function of a file type."""
    if file_type == "image":
        return lambda data: decode_image(data, channels=channels, size=image_size)
    if file_type == "audio":
        return lambda data: decode_wav(data, samples=audio_samples, sample_rate=sample_rate)
    return lambda data: bag_of_words(data.decode("utf-8"), text_width)
