"""The ``carl`` command line (typer)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from carl.plugins import CarlError
from carl.version import __version__

try:  # recent typers vendor click as typer._click; older ones use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(help="carl: train and sample continuous autoregressive models.", no_args_is_help=True, add_completion=False)
recipes_app = typer.Typer(help="List and show the shipped recipes.", no_args_is_help=True)
plugins_app = typer.Typer(help="Installed plugins and what they provide.")
app.add_typer(recipes_app, name="recipes")
app.add_typer(plugins_app, name="plugins", invoke_without_command=True)


def _add_tokenizer_app() -> None:
    from carl.cli_tokenizer import tokenizer_app

    app.add_typer(tokenizer_app, name="tokenizer")


_add_tokenizer_app()

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


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="A recipe file or the name of a shipped recipe (carl recipes list).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides: train.lr=1e-4 sample.cfg=3.0")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (default: the recipe's output).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in the output folder.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start a new run in a non-empty output folder: carl's "
                                            "earlier outputs are replaced, other files kept.")] = False,
) -> None:
    """Train a model from RECIPE; the output folder becomes a model folder for `carl sample`."""
    from carl.config import load_recipe
    from carl.processes import spread_cpu_launch

    code = spread_cpu_launch()  # `accelerate launch --cpu --num_processes N` started only this process
    if code is not None:
        raise typer.Exit(code)
    from carl.train import train as run_training

    cfg = load_recipe(recipe, overrides or [])
    out = run_training(cfg, output=output, resume=resume, progress=progress, overwrite=overwrite)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one report for a multi-process run
        return
    typer.echo(f"model folder: {out}")  # the training summary above lists the rest


@app.command()
def cache(
    recipe: Annotated[str, typer.Argument(help="A recipe file or the name of a shipped recipe.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides: data.source=/data/imagenet")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Cache folder (default: the recipe's `cache`).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Items encoded per call.")] = 64,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Items per Arrow shard (the unit of resumption).")] = 4096,
) -> None:
    """Encode RECIPE's training data once with its tokenizer into a token cache (resumes if interrupted)."""
    from carl.cache import build_cache
    from carl.config import load_recipe

    cfg = load_recipe(recipe, overrides or [])
    folder = output or (Path(cfg.cache) if cfg.cache else None)
    if folder is None:
        raise CarlError("the recipe sets no `cache` folder: pass --output DIR (and set cache=DIR when training)")
    build_cache(cfg, folder, batch_size=batch_size, shard_size=shard_size)
    typer.echo(f"token cache: {folder} (train with cache={folder})")


@app.command()
def sample(
    model: Annotated[str, typer.Argument(
        help="A model folder (a training output or a saved model), a checkpoint folder "
             "(runs/x/checkpoints/step-N: its EMA weights) or a Hub repo id (user/name).")],
    num: Annotated[Optional[int], typer.Option("--num", "-n", help="Samples per row (default: the recipe's).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated conditions, one grid row each: 3,5,7")] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (1: none).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Generation steps (masked orders).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the generation order and the sampling noise.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The file to write, exactly: a picture of the grid (.png, .jpg, .webp) or the samples as "
                            "a tensor (.pt); parent folders are created. Default: samples.png, or samples.pt when the "
                            "data cannot be drawn.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")] = False,
) -> None:
    """Sample a grid (rows of conditions) from a trained model and write it as a picture or a tensor."""
    from dataclasses import replace

    from carl.hub import open_model
    from carl.samples import can_draw, check_output, generate_grid, write_samples

    loaded = open_model(model)
    source = loaded.data_source()
    out = out or Path("samples.png" if can_draw(source) else "samples.pt")
    check_output(out, source, overwrite)  # before spending time on sampling
    changes = dict(per_row=num, cfg=cfg, num_steps=steps, temperature=temperature, seed=seed)
    settings = replace(loaded.sample, **{k: v for k, v in changes.items() if v is not None})
    conditions = None
    if labels:
        rows = loaded.model.conditioner.parse([v.strip() for v in labels.split(",") if v.strip()])
        settings = replace(settings, rows=len(rows))
        conditions = rows.repeat_interleave(settings.per_row)
    data = generate_grid(loaded.model, settings, conditions, progress=True)
    typer.echo(f"wrote {write_samples(source, data, settings.rows, out)}")


@app.command()
def push(
    folder: Annotated[str, typer.Argument(help="A local model folder (a training output or a saved model).")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repository: user/name (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Publish the latest checkpoint's raw weights, not the EMA ones.")] = False,
) -> None:
    """Publish a model folder on the Hugging Face Hub (weights, config, recipe, card, samples; not checkpoints)."""
    from accelerate import PartialState

    from carl.hub import push as push_folder

    if not PartialState().is_main_process:  # under `accelerate launch`, one upload
        return
    typer.echo(f"pushed: {push_folder(folder, repo_id, private=private, raw=raw)}")


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes (from carl and every plugin)."""
    from carl.plugins import recipe_files

    for name, path in recipe_files().items():
        header = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        typer.echo(f"{name:20s} {header}")


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="A shipped recipe name or a recipe file.")]) -> None:
    """Print a recipe's file, after checking that it validates."""
    from carl.config import load_recipe, resolve_recipe_path

    load_recipe(name)
    typer.echo(resolve_recipe_path(name).read_text())


@plugins_app.callback()
def plugins_list(ctx: typer.Context) -> None:
    """List installed plugins, their versions and what each registers."""
    if ctx.invoked_subcommand is not None:
        return
    from carl.plugins import plugin_infos

    for info in plugin_infos():
        status = f"  FAILED TO LOAD: {info.error}" if info.error else ""
        typer.echo(f"{info.name} {info.version} ({info.module}){status}")
        for kind, names in sorted(info.provides.items()):
            typer.echo(f"    {kind}: {', '.join(names)}")


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
    except (CarlError, ValueError, FileNotFoundError, OSError) as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))  # an interrupted run: 128 + the signal
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; continue with --resume", err=True)
        sys.exit(130)
    if isinstance(code, int) and code:  # typer.Exit(code) returns it outside standalone mode (Ctrl-C: 130)
        if code == 130:
            typer.echo("interrupted; continue with --resume", err=True)
        sys.exit(code)


if __name__ == "__main__":  # `accelerate launch -m carl.cli train RECIPE`
    main()
