"""The faces' command line: ``carl`` (entry point :func:`main`, typer app :data:`app`)."""

from carl.cli import catalog, commands, sample, tokenizer  # noqa: F401 (each module adds its commands to the app)
from carl.cli.program import app, main

__all__ = ["app", "main"]
