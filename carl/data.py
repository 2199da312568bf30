"""Data sources: what training reads, and how samples are pictured.

A data source yields dict items ``{"data": Tensor, "condition": Tensor}`` (``condition`` is
optional) through a map-style dataset (HF ``datasets`` tables in practice) and knows how to
turn a batch of decoded samples into pictures for sample grids. The core ships one modality-free
source, ``toy``: a synthetic sequence task with a known multimodal distribution, small enough
for tests and the ``tiny`` recipe.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import annotated_types as at
import numpy as np
import torch
from datasets import Array2D, Dataset, Features, Value

from carl.hookspecs import hookimpl
from carl.ranges import check_ranges


class DataSource(ABC):
    """A registered dataset. carl builds it as ``Cls(config)`` from the recipe's ``data``
    section, validated by the class's ``Config`` dataclass (docs/plugins.md has an example)."""

    @abstractmethod
    def dataset(self, split: str = "train") -> torch.utils.data.Dataset:
        """Map-style dataset of dict items with ``data`` and optionally ``condition``. carl asks
        for ``"train"`` (training, ``carl cache``) and for the split a metric names; raise
        ``ValueError`` naming the available splits for any other."""

    def render(self, data: torch.Tensor) -> np.ndarray | None:
        """Decoded samples ``(B, ...)`` (float, CPU) -> uint8 pictures ``(B, H, W, 3)``, one per
        sample, or None if the data is not pictured (then ``carl sample`` writes ``.pt`` files)."""
        return None

    def read(self, path: Path) -> torch.Tensor:
        """One data item from a file a user gives (``carl sample --inpaint image.png``), in the
        layout of the items of :meth:`dataset` (float, CPU); sources of pictures implement it.

        Raises:
            NotImplementedError: this data is not read from files (complete it in Python with
                ``ContinuousAR.complete``).
        """
        raise NotImplementedError(f"the data source {type(self).__name__} reads no files; complete its data in Python "
                                  f"with ContinuousAR.complete(data, known_mask)")

    def check_tokenizer(self, tokenizer) -> None:
        """Raise ValueError (one line naming both sides) when this data does not fit ``tokenizer``
        in a way shapes cannot show (a forecasting window's context, say); default: nothing.
        Item shapes are checked by the core against ``tokenizer.input_shape``."""


@dataclass(frozen=True)
class ToyConfig:
    """``num_samples`` sequences of ``length`` 2-D points in ``num_classes`` classes."""

    num_samples: Annotated[int, at.Ge(1)] = 2048
    length: Annotated[int, at.Ge(1)] = 8
    num_classes: Annotated[int, at.Ge(1)] = 4
    noise: Annotated[float, at.Ge(0)] = 0.05
    seed: Annotated[int, at.Ge(0)] = 0

    def __post_init__(self) -> None:
        check_ranges(self)


class ToySequences(DataSource):
    """Sequences of 2-D points, ``(T, 2)``, whose next point is bimodal given the current one.

    A class ``k`` starts on a ring at angle ``2 pi k / num_classes``; each step turns by +45 or
    -45 degrees with equal chance and adds Gaussian noise: a known, multimodal conditional
    distribution that a mean-seeking head cannot fit.
    """

    Config = ToyConfig

    def __init__(self, config: ToyConfig):
        self.config = config

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        rng = np.random.default_rng(c.seed)
        labels = rng.integers(0, c.num_classes, c.num_samples)
        turns = rng.choice([-1.0, 1.0], size=(c.num_samples, c.length - 1)) * math.pi / 4
        angles = 2 * math.pi * labels[:, None] / c.num_classes + np.concatenate(
            [np.zeros((c.num_samples, 1)), np.cumsum(turns, axis=1)], axis=1
        )
        points = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
        points += c.noise * rng.standard_normal(points.shape)
        return points.astype(np.float32), labels

    def dataset(self, split: str = "train") -> Dataset:
        points, labels = self.arrays()
        features = Features({"data": Array2D(points.shape[1:], "float32"), "condition": Value("int64")})
        return Dataset.from_dict({"data": points, "condition": labels}, features=features).with_format("torch")

    def render(self, data: torch.Tensor, size_px: int = 120) -> np.ndarray:
        """Each sequence ``(T, 2)`` as a small matplotlib plot: the unit ring in grey, the path
        from a square (the first point) through dots coloured by time (dark to light)."""
        from carl.charts import figure, pixels

        dpi = 100
        fig, ax = figure(size_px / dpi, size_px / dpi, dpi=dpi)
        fig.subplots_adjust(0.02, 0.02, 0.98, 0.98)
        ring = np.linspace(0, 2 * math.pi, 129)
        ax.plot(np.cos(ring), np.sin(ring), color="0.85", lw=1)
        ax.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), xticks=[], yticks=[], aspect="equal")
        sequences = data.reshape(len(data), -1, 2).numpy()  # (B, T, 2)
        (path,) = ax.plot([], [], color="0.4", lw=0.8)
        dots = ax.scatter(sequences[0, :, 0], sequences[0, :, 1], c=np.arange(sequences.shape[1]), cmap="viridis", s=14, zorder=3)
        first = ax.scatter([0], [0], marker="s", s=30, facecolor="none", edgecolor="crimson", zorder=4)
        pictures = []
        for points in sequences:  # one figure, its artists moved: much faster than redrawing axes
            path.set_data(points[:, 0], points[:, 1])
            dots.set_offsets(points)
            first.set_offsets(points[:1])
            pictures.append(pixels(fig))
        return np.stack(pictures)


@hookimpl
def register_datasets(register):
    register("toy", ToySequences)
