"""``carl sample``: samples of a trained model, as a picture grid or a tensor file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carl.cli.program import app
from carl.errors import CarlError

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


@app.command()
def sample(
    model: Annotated[str, typer.Argument(
        help="A model folder (a training output or a saved model), a checkpoint folder "
             "(runs/x/checkpoints/step-N: its EMA weights), a name a plugin ships or a Hub repo id (user/name).")],
    num: Annotated[Optional[int], typer.Option("--num", "-n", min=1, help="Samples per row (default: the recipe's).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated conditions, one grid row each: 3,5,7")] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (1: none).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Generation steps (masked orders).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of the generation order and the sampling noise.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The file to write, exactly: a picture of the grid (.png, .jpg, .webp) or the samples as "
                            "a tensor (.pt); parent folders are created. Default: samples.png, or samples.pt when the "
                            "data cannot be drawn.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="Where to sample: cpu, cuda, cuda:1, mps "
                                                  "(default: cuda when there is one).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Samples generated at once "
                                                      "(default: the whole grid; the samples depend on it).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="The model's dtype while sampling: float32, bfloat16, float16.")] = "float32",
) -> None:
    """Sample a grid (rows of conditions) from a trained model and write it as a picture or a tensor."""
    from dataclasses import replace

    import torch

    from carl.model import open_model
    from carl.model.samples import check_output, generate_grid, render, write_samples
    from carl.weights import first_nonfinite

    if dtype not in DTYPES:
        raise CarlError(f"--dtype {dtype}: choose one of float32, bfloat16, float16")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = open_model(model)
    bad = first_nonfinite(loaded.model)
    if bad is not None:
        raise CarlError(f"the weights of {loaded.folder} hold NaN or infinite values (first: {bad}); they cannot sample")
    source = loaded.data_source()
    if out is not None:
        check_output(out, source, overwrite)  # before spending time on sampling
    changes = dict(per_row=num, cfg=cfg, num_steps=steps, temperature=temperature, seed=seed)
    try:
        settings = replace(loaded.sample, **{k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:  # a range of SampleConfig: --cfg inf, --temperature -1
        option = {"num_steps": "steps", "per_row": "num"}.get(getattr(exc, "key", ""), getattr(exc, "key", ""))
        raise CarlError(f"--{option}: {getattr(exc, 'message', exc)}") from exc
    conditions = None
    if labels:
        rows = loaded.model.conditioner.parse([v.strip() for v in labels.split(",") if v.strip()])
        settings = replace(settings, rows=len(rows))
        conditions = rows.repeat_interleave(settings.per_row)
    try:
        loaded.model.to(device=target, dtype=getattr(torch, DTYPES[dtype]))
    except (RuntimeError, AssertionError) as exc:  # no such device, a CPU-only torch
        raise CarlError(f"--device {target}: {exc}") from exc
    data = generate_grid(loaded.model, settings, conditions, progress=True, batch_size=batch_size).float().cpu()
    if not torch.isfinite(data).all():
        share = (~torch.isfinite(data)).float().mean().item()
        raise CarlError(f"{share:.1%} of the sampled values are NaN or infinite (settings: cfg {settings.cfg:g}, temperature "
                        f"{settings.temperature:g}); nothing was written")
    if out is None:  # the default: a picture if this data draws one, else the tensor
        out = Path("samples.png" if render(source, data[:1]) is not None else "samples.pt") if source else Path("samples.pt")
        check_output(out, source, overwrite)
    typer.echo(f"wrote {write_samples(source, data, settings.rows, out)}")
