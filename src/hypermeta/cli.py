"""The command line: the one list of ``hypermeta`` commands."""

from __future__ import annotations

import json
from typing import Annotated

import typer

import hypermeta

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Meta-learning with hypernetworks (see `hypermeta COMMAND --help`).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hypermeta {hypermeta.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Meta-learning with hypernetworks."""


@app.command()
def networks() -> None:
    """List the built-in target networks and their default configs."""
    for name, cls in sorted(hypermeta.NETWORKS.items()):
        typer.echo(f"{name:12s} {cls.__name__}: {json.dumps(_defaults(name))}")


def _defaults(name: str) -> dict[str, object]:
    examples: dict[str, dict[str, object]] = {
        "mlp": {"in_dim": 1, "out_dim": 1}, "conv4": {}, "gru": {"in_dim": 1, "hidden": 32,
        "out_dim": 1}, "lstm": {"in_dim": 1, "hidden": 32, "out_dim": 1},
        "transformer": {"in_dim": 1, "out_dim": 1},
    }
    net = hypermeta.build_network({"name": name, **examples[name]})
    config: dict[str, object] = net.config  # type: ignore[assignment]
    return config


def main() -> None:
    app()
