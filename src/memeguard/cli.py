"""The ``memeguard`` command. Each stage's sub-commands live beside the stage (``<stage>/cli.py``);
this module only assembles them and turns :class:`MemeguardError` into a one-line error and exit 1.

Heavy imports (torch, transformers) happen inside commands, so ``memeguard --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from memeguard import __version__
from memeguard.errors import MemeguardError

app = typer.Typer(
    name="memeguard",
    help="Hateful-meme detection: data, region features, VL models, training, ensembling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"memeguard {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Hateful-meme detection: data, region features, VL models, training, ensembling."""


# (module, attribute, sub-command name or None to merge its commands at top level)
_SUBAPPS: tuple[tuple[str, str, str | None], ...] = (
    ("memeguard.data.cli", "app", "data"),
    ("memeguard.features.cli", "app", "features"),
    ("memeguard.training.cli", "app", None),
    ("memeguard.ensemble.cli", "app", None),
    ("memeguard.pipeline.cli", "app", None),
    ("memeguard.serving.cli", "app", None),
    ("memeguard.serving.bundle_cli", "app", None),
    ("memeguard.serving.distill_cli", "app", None),
)


def _register_subapps() -> None:
    for module_name, attribute, name in _SUBAPPS:
        sub = getattr(importlib.import_module(module_name), attribute)
        if name is None:
            app.registered_commands.extend(sub.registered_commands)
            app.registered_groups.extend(sub.registered_groups)
        else:
            app.add_typer(sub, name=name)


_register_subapps()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=True)
    except MemeguardError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
