"""The ``carl`` command line (typer): the app, its global options, and one-line errors.

Commands live beside this module, one room per concern: :mod:`carl.cli.commands` (train, cache,
sample, push), :mod:`carl.cli.catalog` (recipes, plugins), :mod:`carl.cli.tokenizer`; plugins add
theirs through the ``register_commands`` hook when :func:`main` runs.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from carl.errors import CarlError
from carl.version import __version__

try:  # recent typers vendor click as typer._click; older ones use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(help="carl: train and sample continuous autoregressive models.", no_args_is_help=True, add_completion=False)
_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"carl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print carl's version and exit.")] = False,
) -> None:
    _state["debug"] = debug


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: message`` instead of Python's file:line and source line (a broken plugin, ...)."""
    typer.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """The ``carl`` program: user errors in one line (usage errors in click's form), tracebacks only with --debug."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    with warnings.catch_warnings():  # restores Python's warning display afterwards
        if not debug:
            warnings.showwarning = _warn_in_one_line
        _run(args, debug)


def _run(args: list[str], debug: bool) -> None:
    try:
        from carl.plugins import register_commands

        register_commands(app)  # a broken plugin is marked failed there; the other commands stay
        code = app(args=args, prog_name="carl", standalone_mode=False)
    except ClickException as exc:  # usage errors: no such command or option, a bad value, a missing argument
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except (CarlError, ValueError, FileNotFoundError, OSError) as exc:  # what a user can fix
        if debug:
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))  # an interrupted run: 128 + the signal
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:  # Ctrl-C outside training, or a stop signal given twice (130 / 143)
        typer.echo("interrupted; continue with --resume", err=True)
        sys.exit(getattr(exc, "exit_code", 130))
    except Exception as exc:  # a bug, carl's or a plugin's: still one line, the traceback on request
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {_one_line(exc)} (an unexpected error; --debug shows the traceback)",
                   err=True)
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(code) returns it outside standalone mode (Ctrl-C: 130)
        if code == 130:
            typer.echo("interrupted; continue with --resume", err=True)
        sys.exit(code)


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message (a library's may run over several)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else type(exc).__name__
