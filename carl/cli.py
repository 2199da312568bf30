"""The ``carl`` command line (typer)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from carl.plugins import CarlError

app = typer.Typer(help="carl: train and sample continuous autoregressive models.", no_args_is_help=True, add_completion=False)
recipes_app = typer.Typer(help="List and show the shipped recipes.", no_args_is_help=True)
plugins_app = typer.Typer(help="Installed plugins and what they provide.")
app.add_typer(recipes_app, name="recipes")
app.add_typer(plugins_app, name="plugins", invoke_without_command=True)

_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="A recipe file or the name of a shipped recipe (carl recipes list).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides: train.lr=1e-4 sample.cfg=3.0")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (default: the recipe's output).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in the output folder.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a model from RECIPE; the output folder becomes a model folder for `carl sample`."""
    from carl.config import load_recipe
    from carl.train import train as run_training

    cfg = load_recipe(recipe, overrides or [])
    out = run_training(cfg, output=output, resume=resume, progress=progress)
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
    checkpoint: Annotated[str, typer.Argument(help="A model folder (a training output) or a Hub repo id.")],
    num: Annotated[Optional[int], typer.Option("--num", "-n", help="Samples per row (default: the recipe's).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated conditions, one grid row each: 3,5,7")] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Generation steps (masked orders).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    out: Annotated[Path, typer.Option("--out", help="Where to write the grid (PNG) or, if not picturable, the tensor (.pt).")] = Path("samples.png"),
) -> None:
    """Sample a grid from a trained model."""
    from dataclasses import replace

    import torch

    from carl.hub import load_model
    from carl.samples import generate_grid, save_grid

    model, recipe = load_model(checkpoint)
    changes = dict(per_row=num, cfg=cfg, num_steps=steps, temperature=temperature, seed=seed)
    settings = replace(recipe.sample, **{k: v for k, v in changes.items() if v is not None})
    conditions = None
    if labels:
        rows = model.conditioner.parse([v for v in labels.split(",") if v.strip()])
        settings = replace(settings, rows=len(rows))
        conditions = rows.repeat_interleave(settings.per_row)
    data = generate_grid(model, settings, conditions, progress=True)
    if save_grid(recipe.data.build("datasets"), data, settings.rows, out) is None:  # not picturable
        out = out.with_suffix(".pt")
        torch.save(data, out)
    typer.echo(f"wrote {out}")


@app.command()
def push(
    checkpoint: Annotated[str, typer.Argument(help="A model folder (a training output).")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repository: user/name.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Publish the latest checkpoint's raw weights, not the EMA ones.")] = False,
) -> None:
    """Publish a model folder on the Hugging Face Hub (weights, config, recipe, model card, samples)."""
    from accelerate import PartialState

    from carl.hub import push as push_folder

    if not PartialState().is_main_process:  # under `accelerate launch`, one upload
        return
    typer.echo(f"pushed: {push_folder(checkpoint, repo_id, private=private, raw=raw)}")


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


def main() -> None:
    from carl.plugins import register_commands

    try:
        register_commands(app)
    except CarlError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except (CarlError, ValueError, FileNotFoundError, OSError) as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; continue with --resume", err=True)
        sys.exit(130)


if __name__ == "__main__":  # `accelerate launch -m carl.cli train RECIPE`
    main()
