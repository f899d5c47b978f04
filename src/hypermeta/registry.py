"""Name -> builder tables that refuse unknown names, open to code outside the package.

Every extensible concept (targets, hypernetworks, encoders, task families, task kinds, methods,
``data prepare`` sources, the server's input decoders) is one ``Registry``. Code outside the
package adds to it with the decorator::

    from hypermeta import TARGETS

    @TARGETS.register("my_net")
    class MyNet(nn.Module): ...

or, without importing anything at start-up, through a Python entry point in the group
``hypermeta.<registry name>`` (e.g. ``hypermeta.targets``), loaded the first time a name is
missing. A YAML config then names the registered builder like a built-in one.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
log = logging.getLogger(__name__)


class UnknownNameError(ValueError):
    """A registry was asked for a name nobody registered; the message lists the known ones."""


class Registry(Generic[T]):
    """A table ``name -> entry`` (a class, a builder function or an object).

    Arguments:
        what: what the entries are, for messages (``"target network"``).
        group: the entry-point group scanned for names that are not registered yet; by
            default ``"hypermeta.<what, plural, with underscores>"``.

    Example:
        >>> SHAPES = Registry[type]("shape")
        >>> @SHAPES.register("square")
        ... class Square: ...
        >>> SHAPES.get("square") is Square
        True
        >>> SHAPES.get("circle")
        Traceback (most recent call last):
        UnknownNameError: unknown shape 'circle'; known: ['square']
    """

    def __init__(self, what: str, *, group: str | None = None) -> None:
        self.what = what
        self.group = group or "hypermeta." + what.replace(" ", "_") + "s"
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._scanned = False

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, entry: T | None = None, *,
                 replace: bool = False) -> T | Callable[[T], T]:
        """Add ``entry`` under ``name`` (as a call, or as a decorator when ``entry`` is omitted).

        A name already taken is an error unless ``replace=True``.
        """
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"a {self.what} name must be a non-empty string without outer "
                             f"spaces; got {name!r}")

        def add(item: T) -> T:
            if not replace and (name in self._entries or name in self._lazy):
                raise ValueError(f"{self.what} {name!r} is registered already; pass "
                                 f"replace=True to override it")
            self._lazy.pop(name, None)
            self._entries[name] = item
            return item

        return add if entry is None else add(entry)

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attribute"``, imported only when ``name`` is first used
        (keeps heavy or layered modules out of processes that never need them)."""
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"lazy target must look like 'package.module:attribute', got "
                             f"{target!r}")
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.what} {name!r} is registered already")
        self._lazy[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plugins that clean up after themselves)."""
        self._entries.pop(name, None)
        self._lazy.pop(name, None)

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises ``UnknownNameError`` listing the
        known ones."""
        if name not in self._entries and name not in self._lazy:
            self._scan_entry_points()
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            try:
                self._entries[name] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ImportError(f"{self.what} {name!r} is registered as {self._lazy[name]!r}, "
                                  f"which cannot be imported ({err}); is its package (or "
                                  "hypermeta extra) installed?") from None
            del self._lazy[name]
        if name in self._entries:
            return self._entries[name]
        raise UnknownNameError(f"unknown {self.what} {name!r}; known: {self.names()}")

    def names(self) -> list[str]:
        """Every registered name, sorted (entry points included)."""
        self._scan_entry_points()
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            if point.name not in self._entries and point.name not in self._lazy:
                self._lazy[point.name] = point.value
                log.debug("entry point %s = %s in %s", point.name, point.value, self.group)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, names={self.names()})"


def accepted_keywords(builder: Callable[..., Any]) -> tuple[set[str], set[str], bool]:
    """``(all keyword names, required ones, accepts **kwargs)`` of a builder's signature."""
    names, required, var = set(), set(), False
    for param in inspect.signature(builder).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var = True
        elif param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            names.add(param.name)
            if param.default is param.empty:
                required.add(param.name)
    return names, required, var


# ------------------------------------------------------------------------------ the registries
# One place for every table. Built-ins register where they are defined (targets in networks.py,
# encoders in encoders.py, hypernetworks in hypernets.py, kinds in kinds.py, task families and
# data sources in tasks/); methods are registered lazily in hypermeta/__init__.py, so that a
# process that never trains (the server) never imports the trainer or the baselines.
TARGETS: Registry[Callable[..., Any]] = Registry("target")
"""name -> ``nn.Module`` class (or builder) taking the config's keywords: ``{name: mlp, ...}``."""
HYPERNETS: Registry[Callable[..., Any]] = Registry("hypernet")
"""name -> ``builder(ctx: BuildContext, /, **config)`` returning a generator of ``ctx.spec``."""
ENCODERS: Registry[Callable[..., Any]] = Registry("encoder")
"""name -> ``builder(ctx: BuildContext, /, **config)`` returning an encoder with ``out_dim``."""
TASK_KINDS: Registry[Any] = Registry("task kind")
"""name -> ``TaskKind`` instance (``hypermeta.kinds``)."""
TASK_FAMILIES: Registry[Callable[..., Any]] = Registry("task family", group="hypermeta.tasks")
"""name -> ``builder(**config)`` returning a ``TaskSource``: ``{name: sinusoid, shots: 5}``."""
METHODS: Registry[Callable[..., Any]] = Registry("method")
"""name -> ``builder(config, tasks, network)`` returning a ``Learner``."""
DATA_SOURCES: Registry[Callable[..., Any]] = Registry("data source")
"""name -> ``prepare(source: Path, out: Path, **options) -> Path`` (``hypermeta data prepare``)."""
INPUT_DECODERS: Registry[Any] = Registry("input decoder")
"""name -> ``InputFormat(decode, schema)`` (``hypermeta.tasks.inputs``): JSON request values to
model inputs, and their OpenAPI form (a task family names its format in
``TaskSource.input_format``)."""



@dataclass(frozen=True)
class BuildContext:
    """What a registered encoder or hypernetwork builder may read besides its own config.

    Attributes:
        x_shape: shape of one input example.
        out_dim: regression target width, or the number of ways for class labels.
        kind: the task kind (a ``TaskKind``).
        x_dtype: dtype of the inputs (float, or long for ids/tokens).
        vocab_size: the number of distinct ids of integer inputs, when the family has one.
        spec: what the hypernetwork must generate (``FunctionalTarget.spec``), when known.
        target: the ``FunctionalTarget``, when built.
        z_dim: the encoder's output width, when built.
    """

    x_shape: tuple[int, ...]
    out_dim: int
    kind: Any
    x_dtype: Any = None
    vocab_size: int | None = None
    spec: Any = None
    target: Any = None
    z_dim: int | None = None
