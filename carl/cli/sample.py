"""``carl sample``: samples of a trained model, or completions of partial data, as a picture grid
or a tensor file."""

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
    num: Annotated[Optional[int], typer.Option("--num", "-n", min=1, help="Samples per row, or completions of each "
                                               "--inpaint item (default: the recipe's samples per row).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated conditions: one grid row each "
                                                  "(3,5,7), or one per --inpaint item.")] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (1: none).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Generation steps (masked orders).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of the generation order and the sampling noise.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The file to write, exactly: a picture of the grid (.png, .jpg, .webp) or the samples as "
                            "a tensor (.pt); parent folders are created. Default: samples.png (completion.png with "
                            "--inpaint), or .pt when the data cannot be drawn.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="Where to sample: cpu, cuda, cuda:1, mps "
                                                  "(default: cuda when there is one).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Samples generated at once "
                                                      "(default: the whole grid; the samples depend on it).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="The model's dtype while sampling: float32, bfloat16, float16.")] = "float32",
    inpaint: Annotated[Optional[list[Path]], typer.Option("--inpaint", help="Complete this data file (an image): "
                                                          "repeat for several. Needs --mask or --keep.")] = None,
    mask: Annotated[Optional[list[Path]], typer.Option("--mask", help="What to generate in --inpaint: white where "
                                                       "new content goes, black what stays (one for all, or one each).")] = None,
    keep: Annotated[Optional[str], typer.Option("--keep", help="Instead of --mask: keep the top, bottom, left or "
                                                "right half and generate the rest.")] = None,
) -> None:
    """Sample a grid (rows of conditions) from a trained model, or complete partial data (--inpaint),
    and write it as a picture or a tensor."""
    import torch

    from carl.model import open_model
    from carl.weights import first_nonfinite

    if dtype not in DTYPES:
        raise CarlError(f"--dtype {dtype}: choose one of float32, bfloat16, float16")
    if (mask or keep) and not inpaint:
        raise CarlError("--mask and --keep say what to keep of --inpaint data: give --inpaint FILE too")
    loaded = open_model(model)
    bad = first_nonfinite(loaded.model)
    if bad is not None:
        raise CarlError(f"the weights of {loaded.folder} hold NaN or infinite values (first: {bad}); they cannot sample")
    source = loaded.data_source()
    settings = _settings(loaded.sample, per_row=num, cfg=cfg, num_steps=steps, temperature=temperature, seed=seed)
    if out is not None:
        _check_output(out, source, overwrite)  # before spending time on sampling
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        loaded.model.to(device=target, dtype=getattr(torch, DTYPES[dtype]))
    except (RuntimeError, AssertionError) as exc:  # no such device, a CPU-only torch
        raise CarlError(f"--device {target}: {exc}") from exc
    if inpaint:
        data, _, write = _complete(loaded, source, settings, inpaint, mask, keep, labels, batch_size)
        default = "completion"
    else:
        data, _, write = _sample(loaded, source, settings, labels, batch_size)
        default = "samples"
    if not torch.isfinite(data).all():
        share = (~torch.isfinite(data)).float().mean().item()
        raise CarlError(f"{share:.1%} of the sampled values are NaN or infinite (settings: cfg {settings.cfg:g}, temperature "
                        f"{settings.temperature:g}); nothing was written")
    if out is None:  # the default: a picture if this data draws one, else the tensor
        out = Path(f"{default}.png" if source is not None and write(Path(f"{default}.png"), dry_run=True) else f"{default}.pt")
        _check_output(out, source, overwrite)
    typer.echo(f"wrote {write(out)}")


def _settings(base, **changes):
    """The recipe's sampling settings with the options given; a value out of range in one line."""
    from dataclasses import replace

    try:
        return replace(base, **{k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:  # a range of SampleConfig: --cfg inf, --temperature -1
        key = getattr(exc, "key", "")
        option = {"num_steps": "steps", "per_row": "num"}.get(key, key)
        raise CarlError(f"--{option}: {getattr(exc, 'message', exc)}") from exc


def _check_output(out: Path, source, overwrite: bool) -> None:
    from carl.model.samples import check_output

    check_output(out, source, overwrite)


def _sample(loaded, source, settings, labels, batch_size):
    """A grid of new samples: (data, rows, writer)."""
    from dataclasses import replace

    from carl.model.samples import generate_grid, render, write_samples

    conditions = None
    if labels:
        rows = loaded.model.conditioner.parse([v.strip() for v in labels.split(",") if v.strip()])
        settings = replace(settings, rows=len(rows))
        conditions = rows.repeat_interleave(settings.per_row)
    data = generate_grid(loaded.model, settings, conditions, progress=True, batch_size=batch_size).float().cpu()

    def write(path: Path, dry_run: bool = False):
        if dry_run:
            return render(source, data[:1]) is not None
        return write_samples(source, data, settings.rows, path)

    return data, settings.rows, write


def _complete(loaded, source, settings, files, masks, keep, labels, batch_size):
    """Completions of the --inpaint items: (completions, rows, writer)."""
    import torch

    from carl.model.samples import TENSOR_SUFFIX, render, save_completion_grid

    if source is None:
        raise CarlError(f"{loaded.folder} was saved without a recipe: its data source, which reads --inpaint files, is unknown")
    try:
        originals = torch.stack([source.read(path) for path in files])
    except NotImplementedError as exc:
        raise CarlError(str(exc)) from exc
    except ValueError as exc:
        raise CarlError(str(exc)) from exc
    known = _known(source, originals, masks, keep)
    conditions = None
    if labels:
        conditions = loaded.model.conditioner.parse([v.strip() for v in labels.split(",") if v.strip()])
        if len(conditions) != len(originals):
            raise CarlError(f"--labels gives {len(conditions)} conditions for {len(originals)} --inpaint items: give one each")
    count = settings.per_row
    generator = torch.Generator().manual_seed(settings.seed)
    repeated = originals.repeat_interleave(count, 0), known.repeat_interleave(count, 0)
    conditions = None if conditions is None else conditions.repeat_interleave(count)
    step = batch_size or len(repeated[0])
    parts = []
    for start in range(0, len(repeated[0]), step):
        chunk = slice(start, start + step)
        parts.append(loaded.model.complete(
            repeated[0][chunk].to(loaded.model.backbone.pos_embed), repeated[1][chunk],
            None if conditions is None else conditions[chunk], num_steps=settings.num_steps, cfg=settings.cfg,
            cfg_schedule=settings.cfg_schedule, temperature=settings.temperature, generator=generator, progress=True,
        ).float().cpu())
    completions = torch.cat(parts)

    def write(path: Path, dry_run: bool = False):
        if dry_run:
            return render(source, completions[:1]) is not None
        if path.suffix.lower() == TENSOR_SUFFIX:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(completions, path)
            return path
        if save_completion_grid(source, originals, known, completions, path) is None:
            raise CarlError(f"cannot write {path}: {type(source).__name__} draws no picture of this data; use .pt")
        return path

    return completions, 1 + count, write


def _known(source, originals, masks, keep):
    """The known-mask of each original: from --keep, or from --mask files (white: to generate)."""
    import torch

    from carl.model.samples import keep_mask

    if keep and masks:
        raise CarlError("give --mask or --keep, not both")
    if keep:
        return keep_mask(tuple(originals.shape[1:]), keep).expand_as(originals)
    if not masks:
        raise CarlError("--inpaint needs what to keep: --mask FILE (white where new content goes) or --keep top|bottom|left|right")
    if len(masks) not in (1, len(originals)):
        raise CarlError(f"{len(masks)} --mask files for {len(originals)} --inpaint items: give one for all or one each")
    try:
        holes = torch.stack([source.read(path) for path in masks])
    except ValueError as exc:
        raise CarlError(str(exc)) from exc
    if holes.shape[-2:] != originals.shape[-2:]:
        raise CarlError(f"the mask has shape {tuple(holes.shape[1:])}, the data {tuple(originals.shape[1:])}")
    hole = holes.float().mean(dim=1, keepdim=True) > 0.5  # white (any colour) is new content, as diffusers reads masks
    return (~hole).expand_as(originals) if len(masks) == len(originals) else (~hole[0]).expand_as(originals)
