"""Sample grids: generate a batch row by row and tile the data source's pictures into a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from carl.config import SampleConfig
from carl.data import DataSource


def tile(pictures: np.ndarray, rows: int, pad: int = 2) -> Image.Image:
    """uint8 pictures ``(rows * cols, H, W, 3)`` -> one image, row-major, ``pad`` pixels apart."""
    padded = np.pad(pictures, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=255)
    return Image.fromarray(rearrange(padded, "(r k) h w c -> (r h) (k w) c", r=rows))


def grid_conditions(model, rows: int, per_row: int) -> torch.Tensor | None:
    """One condition per grid row (e.g. classes 0..rows-1), repeated along the row."""
    conditions = model.conditioner.grid_conditions(rows)
    return None if conditions is None else conditions.repeat_interleave(per_row)


def generate_grid(model, sample: SampleConfig, conditions: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Decoded samples for a ``rows x per_row`` grid under the recipe's sampling settings."""
    if conditions is None:
        conditions = grid_conditions(model, sample.rows, sample.per_row)
    generator = torch.Generator(device="cpu").manual_seed(sample.seed)
    return model.generate(
        conditions,
        batch_size=sample.rows * sample.per_row,
        num_steps=sample.num_steps,
        cfg=sample.cfg,
        cfg_schedule=sample.cfg_schedule,
        temperature=sample.temperature,
        generator=generator,
        progress=progress,
    )


def save_grid(source: DataSource, data: torch.Tensor, rows: int, path: Path) -> Path | None:
    pictures = source.render(data.float().cpu())
    if pictures is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tile(pictures, rows).save(path)
    return path


def save_sample_grid(model, source: DataSource, sample: SampleConfig, path: Path) -> Path | None:
    """Generate and save a grid as PNG; None if the data source cannot be pictured."""
    return save_grid(source, generate_grid(model, sample), sample.rows, path)
