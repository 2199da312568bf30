"""carl's own commands ``train``, ``cache`` and ``push`` (``sample`` has a module of its own). Heavy
modules are imported when a command runs, so ``carl --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carl.cli.program import app
from carl.errors import CarlError


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
    """Train a model from RECIPE (or a tokenizer, from a tokenizer recipe); the output folder becomes a model folder for
    `carl sample` (a tokenizer folder for AR recipes). With --resume the run continues with its own
    recipe (saved with its checkpoints), OVERRIDES given now on top."""
    from carl.training.processes import spread_cpu_launch

    code = spread_cpu_launch()  # `accelerate launch --cpu --num_processes N` started only this process
    if code is not None:
        raise typer.Exit(code)
    from carl.api import resolve
    from carl.api import train as run_training
    from carl.config import TokenizerRecipeConfig

    out = run_training(recipe, overrides or [], output=output, resume=resume, progress=progress, overwrite=overwrite)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one report for a multi-process run
        return
    kind = "tokenizer" if isinstance(resolve(recipe, overrides or []), TokenizerRecipeConfig) else "model"
    typer.echo(f"{kind} folder: {out}")  # the training summary above lists the rest


@app.command()
def cache(
    recipe: Annotated[str, typer.Argument(help="A recipe file or the name of a shipped recipe.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides: data.source=/data/imagenet")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Cache folder (default: the recipe's `cache`).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Items encoded per call.")] = 64,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Items per Arrow shard (the unit of resumption).")] = 4096,
) -> None:
    """Encode RECIPE's training data once with its tokenizer into a token cache (resumes if interrupted)."""
    from carl.config import load_recipe
    from carl.training.cache import AUTO, build_cache

    cfg = load_recipe(recipe, overrides or [])
    folder = output or (Path(cfg.cache) if cfg.cache and cfg.cache != AUTO else None)
    if folder is None:
        why = "`cache: auto`, which each training run encodes into its own output folder" if cfg.cache else "no `cache` folder"
        raise CarlError(f"the recipe sets {why}: pass --output DIR (and set cache=DIR when training)")
    build_cache(cfg, folder, batch_size=batch_size, shard_size=shard_size)
    typer.echo(f"token cache: {folder} (train with cache={folder})")


@app.command()
def push(
    folder: Annotated[str, typer.Argument(help="A local model folder (a training output or a saved model).")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repository: user/name (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Publish the latest checkpoint's raw weights, not the EMA ones.")] = False,
) -> None:
    """Publish a model folder on the Hugging Face Hub (weights, config, recipe, card, samples; not checkpoints)."""
    from accelerate import PartialState

    from carl.api import push as push_folder

    if not PartialState().is_main_process:  # under `accelerate launch`, one upload
        return
    typer.echo(f"pushed: {push_folder(folder, repo_id, private=private, raw=raw)}")
