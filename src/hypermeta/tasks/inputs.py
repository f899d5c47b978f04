"""Input formats: JSON values from a request -> one task's model inputs, strictly typed.

A task family names its format in ``TaskSource.input_format``; the server (and any other
front end) looks it up in ``INPUT_DECODERS``. An ``InputFormat`` holds ``decode(values,
source, name)``, returning ``[N, *source.x_shape]`` in ``source.x_dtype`` and raising
``ValueError`` naming ``name`` and what is wrong, and ``schema(source)``, the JSON form of
ONE example as a type annotation (for the server's OpenAPI document). Registering a new
format is one ``INPUT_DECODERS.register(name, InputFormat(decode, schema))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, StrictInt, StrictStr
from torch import Tensor

from hypermeta.encoders import FLOAT32_MAX, finite_number
from hypermeta.registry import INPUT_DECODERS


@dataclass(frozen=True)
class InputFormat:
    """How request values become inputs (``decode``) and what they look like (``schema``)."""

    decode: Callable[[Any, Any, str], Tensor]
    schema: Callable[[Any, float], Any] = lambda source, limit: Any  # (source, magnitude limit)


def nested(leaf: Any, shape: tuple[int, ...]) -> Any:
    """The annotation of an array of ``shape`` (exact lengths) whose leaves are ``leaf``."""
    for size in reversed(shape):
        leaf = Annotated[list[leaf], Field(min_length=size, max_length=size)]
    return leaf


def _rows(values: Any, name: str) -> list[Any]:
    if not isinstance(values, list):
        raise ValueError(f"{name} must be a JSON array of examples, got {type(values).__name__}")
    if not values:
        raise ValueError(f"{name} is empty")
    return values


def _check_leaves(values: Any, shape: tuple[int, ...], name: str, *, integer: bool) -> None:
    """Every row has ``shape`` and every leaf is a JSON number (int for ``integer``), never a
    string or a boolean (no silent coercion)."""
    stack: list[tuple[Any, int, str]] = [(row, 0, f"{name}[{i}]") for i, row in enumerate(values)]
    while stack:
        value, depth, where = stack.pop()
        if depth < len(shape):
            if not isinstance(value, list) or len(value) != shape[depth]:
                expected = "[" + ", ".join(map(str, shape[depth:])) + "]"
                raise ValueError(f"{where} must be an array of shape {expected}")
            stack.extend((v, depth + 1, f"{where}[{j}]") for j, v in enumerate(value))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {type(value).__name__}")
        if integer and not isinstance(value, int):
            raise ValueError(f"{where} must be an integer id, got {value!r}")
        if not integer and not math.isfinite(value):
            raise ValueError(f"{where} is NaN or Inf")


def decode_numbers(values: Any, source: Any, name: str) -> Tensor:
    """Real-valued inputs: nested arrays of numbers of shape ``[N, *x_shape]``, each finite in
    float32 (a JSON number such as 1e300 that overflows float32 is refused, not made inf)."""
    rows = _rows(values, name)
    shape = tuple(source.x_shape)
    _check_leaves(rows, shape, name, integer=False)
    data = np.asarray(rows, dtype=np.float64)
    if data.size and float(np.abs(data).max()) > FLOAT32_MAX:
        raise ValueError(f"{name} holds a value beyond the float32 range (±{FLOAT32_MAX:.3g})")
    return torch.as_tensor(data, dtype=source.x_dtype)


def decode_integers(values: Any, source: Any, name: str) -> Tensor:
    """Integer inputs (item ids, token ids, actions): arrays of JSON integers of shape
    ``[N, *x_shape]``, each in ``0..source.vocab_size - 1`` when the family declares one."""
    rows = _rows(values, name)
    _check_leaves(rows, tuple(source.x_shape), name, integer=True)
    try:
        data = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    except OverflowError:
        raise ValueError(f"{name} holds an id beyond the int64 range") from None
    vocab = getattr(source, "vocab_size", None)
    if data.numel() and (int(data.min()) < 0 or (vocab is not None and int(data.max()) >= vocab)):
        upper = "" if vocab is None else f"..{vocab - 1}"
        raise ValueError(f"{name} ids must lie in 0{upper}")
    return data.to(source.x_dtype)


def decode_text(values: Any, source: Any, name: str) -> Tensor:
    """Text inputs: a JSON array of strings, turned into inputs by the family's
    ``encode_text(list[str]) -> Tensor`` (its tokenizer or sentence embedding)."""
    rows = _rows(values, name)
    bad = [i for i, v in enumerate(rows) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] must be a string")
    blank = [i for i, v in enumerate(rows) if not v.strip()]
    if blank:
        raise ValueError(f"{name}[{blank[0]}] is empty: every text needs words")
    encode = getattr(source, "encode_text", None)
    if encode is None:
        raise ValueError(f"task family {source.name!r} declares text inputs but has no "
                         "encode_text method")
    out: Tensor = encode(rows)
    return out


def decode_items(values: Any, source: Any, name: str) -> Tensor:
    """Catalogue items: a JSON array of integer item ids, turned into input rows by the
    family's ``encode_items`` (``tasks.movielens``); unknown ids are an error naming them."""
    rows = _rows(values, name)
    bad = [i for i, v in enumerate(rows) if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] must be an integer item id")
    out: Tensor = source.encode_items(rows, name)
    return out


MAX_AUDIO_BYTES = 2_000_000  # one clip, decoded (about 60 s of 16 kHz 16-bit mono)


def decode_audio(values: Any, source: Any, name: str) -> Tensor:
    """Audio inputs: a JSON array of base64-encoded WAV files (mono 16-bit PCM; other rates
    are resampled to the family's), each turned into model inputs by the family's
    ``front_end`` (``hypermeta.audio``: cut/padded, log-mel). Non-strings, bad base64, files
    over ``MAX_AUDIO_BYTES``, and WAVs ``read_wav`` refuses (stereo, 8/24/32-bit, empty,
    silent, longer than 10 s) raise ``ValueError`` naming the row."""
    import base64
    import binascii

    rows = _rows(values, name)
    front_end = getattr(source, "front_end", None)
    if front_end is None:
        raise ValueError(f"task family {source.name!r} declares audio inputs but has no "
                         "front_end")
    files = []
    for i, value in enumerate(rows):
        where = f"{name}[{i}]"
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a base64-encoded WAV string, got "
                             f"{type(value).__name__}")
        if len(value) > MAX_AUDIO_BYTES * 4 // 3 + 4:
            raise ValueError(f"{where} is over the {MAX_AUDIO_BYTES} byte limit of one clip")
        try:
            files.append(base64.b64decode(value.split(",", 1)[-1], validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"{where} is not valid base64") from None
    out: Tensor = front_end.encode(files, what=name)
    return out


def _id(source: Any) -> Any:
    vocab = getattr(source, "vocab_size", None)
    upper = 2**63 - 1 if vocab is None else vocab - 1
    return Annotated[StrictInt, Field(ge=0, le=upper)]


INPUT_DECODERS.register("numbers", InputFormat(
    decode_numbers,
    lambda source, limit: nested(finite_number(limit), tuple(source.x_shape))))
INPUT_DECODERS.register("integers", InputFormat(
    decode_integers, lambda source, limit: nested(_id(source), tuple(source.x_shape))))
INPUT_DECODERS.register("items", InputFormat(
    decode_items, lambda source, limit: Annotated[StrictInt, Field(
        ge=1, le=source.num_items, description="an item id")]))
INPUT_DECODERS.register("audio", InputFormat(
    decode_audio, lambda source, limit: Annotated[StrictStr, Field(
        min_length=1, description="a base64-encoded WAV file (mono 16-bit PCM)")]))
INPUT_DECODERS.register("text", InputFormat(
    decode_text, lambda source, limit: Annotated[StrictStr, Field(min_length=1, pattern=r"\S")]))


def rows(item: Any, what: str) -> Any:
    """The annotation of a non-empty array of ``item`` (one per example)."""
    return Annotated[list[item], Field(min_length=1, description=what)]


def label_schema(source: Any, limit: float = FLOAT32_MAX) -> Any:
    """The JSON form of a support set's labels: class ids ``[S]``, or values ``[S]`` /
    ``[S, out_dim]`` (numbers at most ``limit`` in magnitude), one form per request."""
    what = "support labels, one per row of x (as many)"
    if source.kind.uses_classes:
        return rows(Annotated[StrictInt, Field(ge=0, le=source.out_dim - 1)], what)
    number = finite_number(limit)
    if source.out_dim == 1:
        return rows(number, what) | rows(nested(number, (1,)), what)
    return rows(nested(number, (source.out_dim,)), what)


def decode_labels(values: Any, source: Any, name: str) -> Tensor:
    """Support labels in the family's kind: class ids ``[S]`` (integers in range) or values
    ``[S]``/``[S, out_dim]`` (finite in float32)."""
    rows = _rows(values, name)
    kind = source.kind
    if kind.uses_classes:
        _check_leaves(rows, (), name, integer=True)
        y = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    else:
        width = () if source.out_dim == 1 and not isinstance(rows[0], list) else (source.out_dim,)
        _check_leaves(rows, width, name, integer=False)
        data = np.asarray(rows, dtype=np.float64)
        if data.size and float(np.abs(data).max()) > FLOAT32_MAX:
            raise ValueError(f"{name} holds a value beyond the float32 range")
        y = torch.as_tensor(data, dtype=torch.float32)
    problems = kind.label_problems(y, source.out_dim)
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems))
    return y
