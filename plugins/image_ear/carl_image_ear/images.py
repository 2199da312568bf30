"""Image data sources: the embedded MNIST digits, Hub image datasets and local image folders."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Annotated
from pathlib import Path

import annotated_types as at
import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, Image as ImageFeature, Value, load_dataset
from einops import rearrange, repeat
from PIL import Image

from carl.data import DataSource
from carl.errors import FieldError
from carl.ranges import check_ranges
from carl_image_ear.mnist import mnist_arrays

EMBEDDED = "mnist"
logger = logging.getLogger(__name__)


def open_image(item: dict) -> Image.Image:
    """An image column entry stored undecoded: ``{"bytes": ..., "path": ...}``."""
    return Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])


def is_readable(item: dict) -> bool:
    try:
        with open_image(item) as image:
            image.load()  # decodes every pixel: catches truncated files, not just bad headers
        return True
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError ...)
        return False


@dataclass(frozen=True)
class ImageDataConfig:
    """``source``: ``mnist`` (the embedded digits), a Hub dataset name (``ylecun/mnist``) or a
    local folder of ``<class>/<image>`` files. Images are centre-cropped and resized to
    ``image_size`` with ``channels`` (1 grey, 3 RGB), values in [0, 1]."""

    source: str = EMBEDDED
    split: str = "train"
    image_size: Annotated[int, at.Ge(1)] = 28
    channels: Annotated[int, at.Interval(ge=1, le=3)] = 1

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.channels not in (1, 3):
            raise FieldError("channels", f"must be 1 (grey) or 3 (RGB), got {self.channels}")


class ImageData(DataSource):
    """Labelled images as ``{"data": (C, H, W) float in [0, 1], "condition": label}``."""

    Config = ImageDataConfig

    def __init__(self, config: ImageDataConfig):
        self.config = config
        self.skipped = 0  # unreadable images dropped by the last `dataset` call

    def dataset(self, split: str | None = None) -> Dataset:
        split = split or self.config.split
        if self.config.source == EMBEDDED:
            return self._embedded(split)
        return self._external(split)

    def _embedded(self, split: str) -> Dataset:
        images, labels = mnist_arrays(split)
        if self.config.image_size != 28 or self.config.channels != 1:
            images = np.stack([self._prepare(Image.fromarray(im)) for im in images])
        else:
            images = images[:, None].astype(np.float32) / 255.0
        features = Features({"data": Array3D(images.shape[1:], "float32"), "condition": Value("int64")})
        table = Dataset.from_dict({"data": images, "condition": labels.astype(np.int64)}, features=features)
        return table.with_format("torch")

    def _external(self, split: str) -> Dataset:
        source = self.config.source
        if Path(source).is_dir():  # ImageNet layout: <split>/<class>/<file>, labels from folder names
            table = load_dataset("imagefolder", data_dir=source, split=split)
        else:
            table = load_dataset(source, split=split)
        image_col = next((k for k, f in table.features.items() if isinstance(f, ImageFeature)), None)
        label_col = next((k for k, f in table.features.items() if isinstance(f, ClassLabel)), None)
        if image_col is None:
            raise ValueError(f"dataset '{source}' has no image column; columns: {', '.join(table.column_names)}")
        table = self._readable(table.cast_column(image_col, ImageFeature(decode=False)), image_col)

        def transform(batch: dict) -> dict:
            out = {"data": torch.from_numpy(np.stack([self._prepare(open_image(im)) for im in batch[image_col]]))}
            if label_col is not None:
                out["condition"] = torch.as_tensor(batch[label_col], dtype=torch.long)
            return out

        table.set_transform(transform)
        return table

    def _readable(self, table: Dataset, image_col: str) -> Dataset:
        """Drop the images PIL cannot decode (corrupt, truncated), saying how many: never fatal."""
        workers = min(8, os.cpu_count() or 1) if len(table) > 20_000 else None
        kept = table.filter(lambda row: is_readable(row[image_col]), num_proc=workers, desc="checking images")
        self.skipped = len(table) - len(kept)
        if self.skipped:
            logger.warning("carl: skipped %d unreadable image(s) of %d in %s", self.skipped, len(table), self.config.source)
        return kept

    def _prepare(self, image: Image.Image) -> np.ndarray:
        """Centre crop to a square, resize, convert to ``(C, H, W)`` float32 in [0, 1]."""
        image = image.convert("L" if self.config.channels == 1 else "RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        size = self.config.image_size
        image = image.resize((size, size), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return array[None] if array.ndim == 2 else rearrange(array, "h w c -> c h w")

    def read(self, path: Path) -> torch.Tensor:
        """An image file as one item ``(C, H, W)`` in [0, 1], centre-cropped and resized like the data."""
        try:
            with Image.open(path) as image:
                return torch.from_numpy(self._prepare(image))
        except OSError as exc:  # missing, unreadable, not an image
            raise ValueError(f"cannot read the image {path}: {exc}") from exc

    def render(self, data: torch.Tensor) -> np.ndarray:
        pictures = (data.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (B, C, H, W)
        if pictures.shape[1] == 1:
            return repeat(pictures, "b 1 h w -> b h w c", c=3)
        return rearrange(pictures, "b c h w -> b h w c")
