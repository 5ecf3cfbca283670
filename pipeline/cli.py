"""The `returnrisk` command line (Typer). Subcommands live in pipeline/commands/*.py."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import pipeline.commands as _commands

app = typer.Typer(
    name="returnrisk",
    help="Predict order-line returns, flag return abuse and explain every score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{_commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()

if __name__ == "__main__":  # pragma: no cover
    app()
