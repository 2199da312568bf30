"""Sample grids: generate a batch row by row and tile the data source's pictures into a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from carl.config import SampleConfig
from carl.data import DataSource
from carl.errors import CarlError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TENSOR_SUFFIX = ".pt"


def tile(pictures: np.ndarray, rows: int, pad: int = 2) -> Image.Image:
    """uint8 pictures ``(rows * cols, H, W, 3)`` -> one image, row-major, ``pad`` pixels apart."""
    padded = np.pad(pictures, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=255)
    return Image.fromarray(rearrange(padded, "(r k) h w c -> (r h) (k w) c", r=rows))


def grid_conditions(model, rows: int, per_row: int) -> torch.Tensor | None:
    """One condition per grid row (e.g. classes 0..rows-1), repeated along the row."""
    conditions = model.conditioner.grid_conditions(rows)
    return None if conditions is None else conditions.repeat_interleave(per_row)


def generate_grid(model, sample: SampleConfig, conditions: torch.Tensor | None = None, progress: bool = False,
                  batch_size: int | None = None) -> torch.Tensor:
    """Decoded samples for a ``rows x per_row`` grid under the recipe's sampling settings, generated
    ``batch_size`` at a time (default: all at once; one seeded generator runs through the batches,
    so the samples depend on the batch size)."""
    if conditions is None:
        conditions = grid_conditions(model, sample.rows, sample.per_row)
    total = sample.rows * sample.per_row if conditions is None else len(conditions)
    batch_size = batch_size or total
    generator = torch.Generator(device="cpu").manual_seed(sample.seed)
    settings = dict(num_steps=sample.num_steps, cfg=sample.cfg, cfg_schedule=sample.cfg_schedule,
                    temperature=sample.temperature, generator=generator, progress=progress)
    batches = []
    for start in range(0, total, batch_size):
        count = min(batch_size, total - start)
        chunk = None if conditions is None else conditions[start : start + count]
        batches.append(model.generate(chunk, batch_size=count, **settings))
    return torch.cat(batches)


def render(source: DataSource, data: torch.Tensor) -> np.ndarray | None:
    """``source.render`` held to its contract: uint8 pictures ``(B, H, W, 3)``, one per sample, or None."""
    pictures = source.render(data.float().cpu())
    if pictures is None:
        return None
    if isinstance(pictures, torch.Tensor):
        pictures = pictures.numpy()
    if not (isinstance(pictures, np.ndarray) and pictures.dtype == np.uint8 and pictures.ndim == 4
            and pictures.shape[0] == len(data) and pictures.shape[-1] == 3):
        got = f"{type(pictures).__name__} {getattr(pictures, 'dtype', '')} {tuple(getattr(pictures, 'shape', ()))}"
        raise CarlError(f"{type(source).__name__}.render must return uint8 pictures (B, H, W, 3) with B = {len(data)} "
                        f"(or None if the data cannot be drawn); it returned {got}")
    return pictures


def save_grid(source: DataSource, data: torch.Tensor, rows: int, path: Path) -> Path | None:
    """Draw ``data`` as a grid of ``rows`` rows into ``path`` (parent folders created); None if
    the data source cannot draw it."""
    pictures = render(source, data)
    if pictures is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tile(pictures, rows).save(path)
    return path


def can_draw(source: DataSource | None) -> bool:
    """Whether a data source implements ``render`` at all (it may still return None)."""
    return source is not None and type(source).render is not DataSource.render


def check_output(path: Path, source: DataSource | None, overwrite: bool) -> None:
    """Refuse, before any sampling, what :func:`write_samples` could not write exactly at ``path``."""
    suffix = path.suffix.lower()
    if suffix not in PICTURE_SUFFIXES + (TENSOR_SUFFIX,):
        raise CarlError(f"--out {path}: give a picture ({', '.join(PICTURE_SUFFIXES)}) or a tensor file ({TENSOR_SUFFIX})")
    if suffix in PICTURE_SUFFIXES and not can_draw(source):
        why = ("it was saved without a recipe, so its data source is unknown" if source is None
               else f"its data source {type(source).__name__} draws no pictures")
        raise CarlError(f"cannot write {path}: this model's samples cannot be drawn ({why}); "
                        f"write them as a tensor instead: --out {path.with_suffix(TENSOR_SUFFIX)}")
    if path.is_dir():
        raise CarlError(f"--out {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise CarlError(f"{path} exists; pass --overwrite to replace it, or choose another --out")


def write_samples(source: DataSource | None, data: torch.Tensor, rows: int, path: Path) -> Path:
    """Write exactly ``path``: a grid picture (``.png``, ``.jpg``, ``.webp``) or the samples
    as a tensor (``.pt``); parent folders are created. Call :func:`check_output` first."""
    if path.suffix.lower() == TENSOR_SUFFIX:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data.cpu(), path)
        return path
    if save_grid(source, data, rows, path) is None:
        raise CarlError(f"cannot write {path}: {type(source).__name__}.render returned None for these samples; "
                        f"write them as a tensor instead: --out {path.with_suffix(TENSOR_SUFFIX)}")
    return path


def save_sample_grid(model, source: DataSource, sample: SampleConfig, path: Path) -> Path | None:
    """Generate and save a grid as PNG; None if the data source cannot be pictured."""
    return save_grid(source, generate_grid(model, sample), sample.rows, path)


KEEP = ("top", "bottom", "left", "right")


def keep_mask(shape: tuple[int, ...], keep: str) -> torch.Tensor:
    """A known-mask of one item of ``shape`` that keeps its ``top``, ``bottom``, ``left`` or ``right``
    half (the last two axes are rows and columns: ``(C, H, W)`` images)."""
    if keep not in KEEP:
        raise CarlError(f"--keep {keep}: choose one of {', '.join(KEEP)}")
    if len(shape) < 2:
        raise CarlError(f"--keep needs data of rows and columns; this data's items have shape {tuple(shape)}")
    known = torch.zeros(shape, dtype=torch.bool)
    rows, cols = shape[-2], shape[-1]
    region = {"top": (slice(0, rows // 2), slice(None)), "bottom": (slice(rows // 2, None), slice(None)),
              "left": (slice(None), slice(0, cols // 2)), "right": (slice(None), slice(cols // 2, None))}[keep]
    known[(..., *region)] = True
    return known


def save_completion_grid(source: DataSource, originals: torch.Tensor, known: torch.Tensor, completions: torch.Tensor,
                         path: Path) -> Path | None:
    """One column per original: the original with its hole (shown at the middle of the data's
    range) above its completions, ``completions`` being ``(K * B, ...)`` (K completions of each of
    the ``B`` originals, original-major). None if the data cannot be drawn."""
    batch = len(originals)
    middle = (originals.amin() + originals.amax()) / 2
    holes = torch.where(known, originals, middle)
    per_original = completions.view(batch, -1, *completions.shape[1:]).transpose(0, 1).flatten(0, 1)  # row-major
    return save_grid(source, torch.cat([holes, per_original]), 1 + len(completions) // batch, path)
