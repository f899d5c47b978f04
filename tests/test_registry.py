"""Registries refuse unknown names (listing the known ones) and take outside registrations."""

from __future__ import annotations

import pytest

import hypermeta
from hypermeta.registry import Registry, UnknownNameError


def test_unknown_names_list_the_known_ones():
    table: Registry[int] = Registry("widget")
    table.register("a", 1)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'b'; known: \['a'\]"):
        table.get("b")
    with pytest.raises(ValueError, match="registered already"):
        table.register("a", 2)
    table.register("a", 2, replace=True)
    assert table.get("a") == 2 and "a" in table and list(table) == ["a"]


def test_decorator_and_lazy_registration():
    table: Registry[object] = Registry("thing")

    @table.register("cls")
    class Thing:
        pass

    assert table.get("cls") is Thing
    table.register_lazy("path", "pathlib:Path")
    from pathlib import Path

    assert table.get("path") is Path
    with pytest.raises(ValueError, match="package.module:attribute"):
        table.register_lazy("bad", "no_colon")
    table.register_lazy("broken", "no_such_module_x:Thing")
    for _ in range(2):  # a failed import names the entry, and keeps it registered
        with pytest.raises(ImportError, match="thing 'broken' is registered as"):
            table.get("broken")
    assert "broken" in table.names()
    with pytest.raises(ValueError, match="non-empty string"):
        table.register(" padded ", 1)


@pytest.mark.parametrize("registry, name", [
    (hypermeta.TARGETS, "mlp"), (hypermeta.HYPERNETS, "chunked"), (hypermeta.ENCODERS, "set"),
    (hypermeta.TASK_KINDS, "classification"), (hypermeta.METHODS, "maml"),
    (hypermeta.DATA_SOURCES, "omniglot"), (hypermeta.INPUT_DECODERS, "integers"),
])
def test_every_concept_is_a_registry_with_its_built_ins(registry, name):
    import hypermeta.config  # noqa: F401  (registers task families and decoders)

    assert name in registry.names()
    assert registry.get(name) is not None
    with pytest.raises(UnknownNameError, match="known: "):
        registry.get("no-such-name")


def test_task_families_registry_builds_and_refuses():
    source = hypermeta.get_tasks("sinusoid", shots=3)
    assert source.kind is hypermeta.get_kind("regression") and source.shots == 3
    with pytest.raises(UnknownNameError, match="unknown task family 'sinusiod'"):
        hypermeta.get_tasks("sinusiod")
    with pytest.raises(TypeError, match="bad arguments for task family 'sinusoid'"):
        hypermeta.get_tasks("sinusoid", ways=3)


def test_public_run_api_is_importable_from_the_package():
    for name in ("fit", "RunConfig", "load", "load_run", "evaluate", "get_tasks", "Callback",
                 "ProgressBar", "TaskSource"):
        assert name in hypermeta.__all__ and getattr(hypermeta, name) is not None
    missing = [n for n in hypermeta.__all__ if not hasattr(hypermeta, n)]
    assert not missing
    with pytest.raises(AttributeError):
        hypermeta.no_such_name  # noqa: B018
