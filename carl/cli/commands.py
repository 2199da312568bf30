"""carl's own commands: ``train``, ``cache``, ``sample`` and ``push``. Heavy modules are imported
when a command runs, so ``carl --help`` stays fast."""

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
    """Train a model from RECIPE; the output folder becomes a model folder for `carl sample`."""
    from carl.config import load_recipe
    from carl.training.processes import spread_cpu_launch

    code = spread_cpu_launch()  # `accelerate launch --cpu --num_processes N` started only this process
    if code is not None:
        raise typer.Exit(code)
    from carl.api import train as run_training

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
    from carl.config import load_recipe
    from carl.training.cache import build_cache

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

    from carl.model import open_model
    from carl.model.samples import can_draw, check_output, generate_grid, write_samples

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

    from carl.api import push as push_folder

    if not PartialState().is_main_process:  # under `accelerate launch`, one upload
        return
    typer.echo(f"pushed: {push_folder(folder, repo_id, private=private, raw=raw)}")
