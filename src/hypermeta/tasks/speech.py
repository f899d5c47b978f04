"""Spoken-word tasks: synthetic voices (espeak-ng) and real speakers (FSDD).

``spoken_words`` — few-shot word recognition: N-way K-shot episodes over words spoken by many
synthetic voices. The vocabulary (150 words) and the 80 voices (accent x variant x pitch x
speed of Debian's ``espeak-ng``) are fixed in ``speech_words.json`` and split train / val /
test; an episode's words and its utterances' voices come from the same split, so test words and
test voices are never heard in training, and the K examples of a class come from K different
voices. ``hypermeta data prepare spoken-words espeak-ng OUT.npz`` synthesises them once (about
13k clips, 1-2 minutes on 2 cores); the family prepares ``$HYPERMETA_CACHE/spoken_words.npz``
itself when it is missing and ``espeak-ng`` is installed.

``fsdd`` — the Free Spoken Digit Dataset (6 speakers x 10 digits x 50 takes, 8 kHz; never
copied: read from ``data_dir``/``$HYPERMETA_DATA`` ``/fsdd``). A task is one speaker: 10-way
K-shot, support drawn from the speaker's training takes (5-49), queries = its official test
takes (0-4) at evaluation. ``test_speaker`` holds one speaker out (leave-one-speaker-out):
training episodes come from the other five (their takes 5-49), validation episodes query their
test takes; without it every speaker is a test speaker (sim-to-real evaluation of a model
trained on synthetic voices).

Inputs are normalised log-mel frames ``[frames, n_mels]`` of the first ``seconds`` of each clip
(``hypermeta.audio``); the family's ``front_end`` turns a WAV into them (the server's ``audio``
input format, and the waveform-in ONNX export).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hypermeta.audio import (
    SAMPLE_RATE,
    FrontEndConfig,
    features,
    fit_length,
    read_wav,
    resample,
)
from hypermeta.episodes import Episode
from hypermeta.files import atomic_write_bytes, cache_root
from hypermeta.kinds import get_kind
from hypermeta.tasks.arrays import LabeledArrayTasks
from hypermeta.tasks.base import SPLITS, Split, TaskSource, check_split

WORDS_FILE = Path(__file__).with_name("speech_words.json")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_TEST_TAKES = range(5)  # the official split: takes 0-4 test, 5-49 train


def word_lists() -> dict[str, Any]:
    """The fixed vocabulary, voices and their splits (``speech_words.json``)."""
    data: dict[str, Any] = json.loads(WORDS_FILE.read_text())
    return data


# ----------------------------------------------------------------------------- synthesis
def parse_voice(name: str) -> tuple[str, int, int]:
    """``"en-us+m3-p40-s150"`` -> (espeak voice ``en-us+m3``, pitch 40, speed 150)."""
    try:
        voice, pitch, speed = name.rsplit("-", 2)
        if not (pitch.startswith("p") and speed.startswith("s")):
            raise ValueError
        return voice, int(pitch[1:]), int(speed[1:])
    except ValueError:
        raise ValueError(f"voice {name!r} is not ACCENT+VARIANT-pPITCH-sSPEED") from None


def trim(wav: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold`` x the peak."""
    loud = np.flatnonzero(np.abs(wav) >= threshold * max(float(np.abs(wav).max()), 1e-9))
    return wav[loud[0]: loud[-1] + 1] if loud.size else wav[:0]


def synthesize(word: str, voice: str, *, program: str = "espeak-ng",
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``word`` spoken by ``voice`` (see ``parse_voice``), trimmed, at ``sample_rate``."""
    name, pitch, speed = parse_voice(voice)
    done = subprocess.run([program, "-v", name, "-p", str(pitch), "-s", str(speed), "--stdout",
                           word], capture_output=True, check=False, timeout=60)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"{program} failed for {word!r} / {voice}: "
                           f"{done.stderr.decode(errors='replace').strip()[:200]}")
    # espeak-ng streams: its header declares no length; read what is there
    data = done.stdout
    rate = int.from_bytes(data[24:28], "little")
    pcm = np.frombuffer(data[44: 44 + (len(data) - 44) // 2 * 2], dtype="<i2")
    return trim(resample(pcm.astype(np.float32) / 32768.0, rate, sample_rate))


def find_espeak(program: str = "espeak-ng") -> str:
    found = shutil.which(program)
    if found is None:
        raise FileNotFoundError(f"{program} is not installed: `apt-get install espeak-ng` "
                                "(Debian/Ubuntu; `make` does it when root)")
    return found


def prepare_spoken_words(source: str = "espeak-ng", out: str = "spoken_words.npz",
                         max_words: int | None = None, max_voices: int | None = None,
                         workers: int = 2) -> Path:
    """Synthesise every word (and the ten digits) with every voice of ``speech_words.json``
    using the program ``source`` and write one compact npz (int16 clips at 8 kHz,
    concatenated, with offsets), atomically. ``max_words`` / ``max_voices`` keep the first
    ones of each split (for tests)."""
    program = find_espeak(source)
    lists = word_lists()
    words = [w for s in SPLITS for w in lists["words"][s][:max_words]] + list(DIGITS)
    voices = [v for s in SPLITS for v in lists["voices"][s][:max_voices]]
    jobs = [(w, v) for w in range(len(words)) for v in range(len(voices))]

    def run(job: tuple[int, int]) -> np.ndarray:
        return synthesize(words[job[0]], voices[job[1]], program=program)

    clips: list[np.ndarray] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, clip in enumerate(pool.map(run, jobs)):
            clips.append(np.round(np.clip(clip, -1, 1) * 32767).astype(np.int16))
            if sys.stderr.isatty() and (i + 1) % 500 == 0:
                print(f"\rsynthesised {i + 1}/{len(jobs)}", end="", file=sys.stderr)
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, audio=np.concatenate(clips), offsets=np.concatenate(
        [[0], np.cumsum(lengths)]), word=np.array([j[0] for j in jobs], dtype=np.int16),
        voice=np.array([j[1] for j in jobs], dtype=np.int16), words=np.array(words),
        voices=np.array(voices), sample_rate=np.array(SAMPLE_RATE))
    return atomic_write_bytes(out, buffer.getvalue())


@dataclass(frozen=True)
class Clips:
    """Fixed-length clips ``waves [N, samples]`` float32 with their labels."""

    waves: np.ndarray
    label: np.ndarray  # word / digit index
    group: np.ndarray  # voice / speaker index
    take: np.ndarray  # FSDD take (0-49); -1 for synthetic clips
    labels: list[str]
    groups: list[str]


def load_spoken_words(data_file: str | Path, samples: int) -> Clips:
    try:
        with np.load(data_file, allow_pickle=False) as data:
            audio, offsets = data["audio"], data["offsets"]
            waves = np.stack([fit_length(audio[a:b].astype(np.float32) / 32768.0, samples)
                              for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
            return Clips(waves, data["word"].astype(np.int64), data["voice"].astype(np.int64),
                         np.full(len(waves), -1), [str(w) for w in data["words"]],
                         [str(v) for v in data["voices"]])
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"{data_file} is not a file written by `hypermeta data prepare "
                         f"spoken-words` ({err})") from None


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SpeechTasks(LabeledArrayTasks):
    """Few-shot word recognition over log-mel features; inputs arrive over HTTP as WAV."""

    input_format = "audio"
    front_end: FrontEndConfig
    labels: list[str]


def spoken_words_tasks(data_file: str | None = None, *, ways: int = 5, shots: int = 1,
                       queries: int = 10, seconds: float = 0.8, n_mels: int = 32,
                       digits: bool = False) -> SpeechTasks:
    """N-way K-shot spoken-word episodes (module docstring).

    Arguments:
        data_file: the npz of ``hypermeta data prepare spoken-words``; default
            ``$HYPERMETA_CACHE/spoken_words.npz``, synthesised on first use when missing.
        ways, shots, queries: N, K and the query clips per class.
        seconds, n_mels: the front end (clip length, mel bands).
        digits: classes are the ten digit words instead (train / val / test = the voices'
            splits; for the speaker-independent sim-to-real baseline).
    """
    front_end = FrontEndConfig(seconds=seconds, n_mels=n_mels)
    path = Path(data_file) if data_file else cache_root() / "spoken_words.npz"
    if not path.is_file():
        if data_file:
            raise FileNotFoundError(f"{path} does not exist; write it with `hypermeta data "
                                    "prepare spoken-words espeak-ng PATH`")
        print(f"synthesising the spoken-word set into {path} (once)...", file=sys.stderr)
        prepare_spoken_words(out=str(path))
    clips = load_spoken_words(path, front_end.samples)
    lists = word_lists()
    voice_split = {v: s for s in SPLITS for v in lists["voices"][s]}
    word_split = ({w: s for s in SPLITS for w in lists["words"][s]} if not digits else {})
    keep, label = [], []
    classes: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i in range(len(clips.label)):
        word, voice = clips.labels[clips.label[i]], clips.groups[clips.group[i]]
        split = voice_split.get(voice)
        wanted = (word in DIGITS) if digits else (word_split.get(word) == split)
        if split is not None and wanted:
            keep.append(i)
            # digits: one class per (digit, split) so that splits stay class-disjoint
            label.append(clips.label[i] + (len(clips.labels) * SPLITS.index(split)
                                            if digits else 0))
    label_arr = np.array(label, dtype=np.int64)
    for c, i in zip(label_arr.tolist(), keep, strict=True):
        split = voice_split[clips.groups[clips.group[i]]]
        if c not in classes[split]:
            classes[split].append(c)
    x = features(front_end, clips.waves[keep])
    source = SpeechTasks(x, label_arr, ways=ways, shots=shots, queries=queries,
                         classes={s: sorted(v) for s, v in classes.items()},
                         name="spoken_words_digits" if digits else "spoken_words",
                         provenance={"data_file_sha256": _digest(path),
                                     "lists_sha256": hashlib.sha256(
                                         WORDS_FILE.read_bytes()).hexdigest()})
    source.front_end = front_end
    source.labels = [clips.labels[c % len(clips.labels)] for c in range(
        len(clips.labels) * (len(SPLITS) if digits else 1))]
    return source


# ----------------------------------------------------------------------------- FSDD
def fsdd_dir(data_dir: str | Path | None = None) -> Path:
    """The FSDD folder (holding ``recordings/``), from ``data_dir`` or ``$HYPERMETA_DATA``."""
    root = data_dir if data_dir is not None else os.environ.get("HYPERMETA_DATA")
    if root is None:
        raise FileNotFoundError("no FSDD location: pass tasks.data_dir (--data-dir) or set "
                                "HYPERMETA_DATA to the folder that holds fsdd/")
    for candidate in (Path(root) / "fsdd", Path(root)):
        if (candidate / "recordings").is_dir():
            return candidate
    raise FileNotFoundError(f"{root} holds neither fsdd/recordings/ nor recordings/")


def load_fsdd(data_dir: str | Path | None, samples: int) -> Clips:
    """Every ``recordings/{digit}_{speaker}_{take}.wav`` of FSDD, cut/padded to ``samples``."""
    root = fsdd_dir(data_dir)
    files = sorted((root / "recordings").glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"{root / 'recordings'} holds no .wav files")
    rows: list[tuple[int, str, int, np.ndarray]] = []
    for file in files:
        try:
            digit, speaker, take = file.stem.split("_")
            rows.append((int(digit), speaker, int(take), fit_length(
                read_wav(file.read_bytes(), what=file.name), samples)))
        except ValueError as err:
            raise ValueError(f"{file}: not an FSDD recording ({err})") from None
    speakers = sorted({r[1] for r in rows})
    return Clips(np.stack([r[3] for r in rows]), np.array([r[0] for r in rows]),
                 np.array([speakers.index(r[1]) for r in rows]), np.array([r[2] for r in rows]),
                 list(DIGITS), speakers)


class FSDDTasks(TaskSource):
    """One task per speaker: a 10-way digit recogniser from K takes per digit (module
    docstring). Test episodes cycle through the test speakers, 50 queries each (takes 0-4)."""

    kind = get_kind("classification")
    input_format = "audio"

    def __init__(self, x: Tensor, clips: Clips, *, test_speakers: list[str], shots: int = 5,
                 queries: int = 10, front_end: FrontEndConfig,
                 provenance: dict[str, Any] | None = None) -> None:
        unknown = sorted(set(test_speakers) - set(clips.groups))
        if unknown:
            raise ValueError(f"unknown FSDD speakers {unknown}; known: {clips.groups}")
        if shots < 1 or queries < 1:
            raise ValueError(f"shots and queries must be >= 1; got {shots}, {queries}")
        self.name, self.x, self.clips = "fsdd", x, clips
        self.shots, self.queries, self.ways, self.out_dim = shots, queries, 10, 10
        self.x_shape = tuple(x.shape[1:])
        self.front_end, self.labels = front_end, list(DIGITS)
        self.test_speakers = [clips.groups.index(s) for s in test_speakers]
        self.train_speakers = [g for g in range(len(clips.groups))
                               if g not in self.test_speakers]
        self.default_eval_tasks = {"val": 100, "test": 20 * len(self.test_speakers)}
        self._provenance = provenance or {}
        test = np.isin(clips.take, list(FSDD_TEST_TAKES))
        self._rows = {(g, d, t): torch.as_tensor(np.flatnonzero(
            (clips.group == g) & (clips.label == d) & (test == t)))
            for g in range(len(clips.groups)) for d in range(10) for t in (False, True)}

    def _episodes(self, speakers: list[int], count: int, generator: torch.Generator, *,
                  held_out_queries: bool) -> Episode:
        if not speakers:
            raise ValueError("this FSDD source has no speakers for that split (every speaker "
                             "is a test speaker: train on another family, e.g. spoken_words)")
        support, query, query_y = [], [], []
        for t in range(count):
            if held_out_queries:
                g = speakers[t % len(speakers)]
            else:
                g = speakers[int(torch.randint(len(speakers), (1,), generator=generator))]
            s_rows, q_rows, q_y = [], [], []
            for d in range(10):
                train_rows = self._rows[(g, d, False)]
                pick = train_rows[torch.randperm(len(train_rows), generator=generator)]
                s_rows.append(pick[: self.shots])
                q = self._rows[(g, d, True)] if held_out_queries else \
                    pick[self.shots: self.shots + self.queries]
                q_rows.append(q)
                q_y.append(torch.full((len(q),), d))
            support.append(torch.cat(s_rows))
            query.append(torch.cat(q_rows))
            query_y.append(torch.cat(q_y))
        support_y = torch.arange(10).repeat_interleave(self.shots)
        return Episode(self.x[torch.stack(support)], support_y.expand(count, -1).clone(),
                       self.x[torch.stack(query)], torch.stack(query_y), ways=10)

    def sample(self, split: Split, num_tasks: int, generator: torch.Generator) -> Episode:
        check_split(split)
        if split == "test":
            return self._episodes(self.test_speakers, num_tasks, generator,
                                  held_out_queries=True)
        return self._episodes(self.train_speakers, num_tasks, generator,
                              held_out_queries=split == "val")

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance)


def fsdd_tasks(data_dir: str | None = None, *, test_speaker: str | None = None,
               ways: int = 10, shots: int = 5, queries: int = 10, seconds: float = 0.8,
               n_mels: int = 32) -> FSDDTasks:
    """FSDD speaker tasks (module docstring).

    Arguments:
        data_dir: the folder holding ``fsdd/`` (default ``$HYPERMETA_DATA``).
        test_speaker: the held-out speaker (leave-one-speaker-out); None = all six are test
            speakers (evaluation only).
        shots: K takes per digit in the support set; queries: per digit in training episodes.
        ways: must be 10 (every task is one speaker's ten digits); here so configs can say it.
        seconds, n_mels: the front end.
    """
    if ways != 10:
        raise ValueError(f"FSDD tasks are 10-way (the ten digits); got ways={ways}")
    front_end = FrontEndConfig(seconds=seconds, n_mels=n_mels)
    clips = load_fsdd(data_dir, front_end.samples)
    tests = [test_speaker] if test_speaker is not None else list(clips.groups)
    digest = hashlib.sha256(clips.waves.tobytes()).hexdigest()
    return FSDDTasks(features(front_end, clips.waves), clips, test_speakers=tests, shots=shots,
                     queries=queries, front_end=front_end,
                     provenance={"fsdd_sha256": digest, "test_speakers": tests})
