"""Noisy sine waves; class ``k`` has ``k + 1`` periods per window, at a random phase."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, Value

from carl.data import DataSource

SEEDS = {"train": 0, "validation": 1}  # the splits this source has


@dataclass(frozen=True)
class SineWavesConfig:
    num_samples: int = 512
    length: int = 32
    num_classes: int = 4
    noise: float = 0.05


class SineWaves(DataSource):
    """Built by carl as ``SineWaves(config)`` from the recipe's ``data`` section."""

    Config = SineWavesConfig

    def __init__(self, config: SineWavesConfig):
        self.config = config

    def dataset(self, split: str = "train") -> Dataset:
        """Items ``{"data": (1, length) float32, "condition": class label}``: one channel of ``length`` steps."""
        if split not in SEEDS:
            raise ValueError(f"split must be one of {', '.join(SEEDS)}, got {split!r}")
        c = self.config
        rng = np.random.default_rng(SEEDS[split])
        labels = rng.integers(0, c.num_classes, c.num_samples)
        phase = rng.uniform(0, 2 * np.pi, (c.num_samples, 1))
        steps = np.arange(c.length) / c.length
        waves = np.sin(2 * np.pi * (labels[:, None] + 1) * steps + phase) + c.noise * rng.standard_normal((c.num_samples, c.length))
        features = Features({"data": Array2D((1, c.length), "float32"), "condition": Value("int64")})
        return Dataset.from_dict({"data": waves[:, None].astype(np.float32), "condition": labels}, features=features).with_format("torch")

    def render(self, data: torch.Tensor) -> np.ndarray:
        """Each wave ``(B, 1, length)`` as a line plot: uint8 pictures ``(B, H, W, 3)``, H = 24, W = length."""
        height = 24
        values = data.reshape(len(data), -1).clamp(-1.2, 1.2).numpy()
        rows = np.round((1.2 - values) / 2.4 * (height - 1)).astype(int)  # (B, length): the pixel row of each step
        pictures = np.full((len(values), height, values.shape[1], 3), 255, dtype=np.uint8)
        batch, column = np.indices(rows.shape)
        pictures[batch, rows, column] = (20, 60, 160)
        return pictures

    def read(self, path: Path) -> torch.Tensor:
        """A wave of your own, ``length`` numbers in a text file (commas or new lines between them), as
        one item ``(1, length)``: what ``carl sample --inpaint wave.csv`` completes."""
        try:
            values = np.loadtxt(path, delimiter=",", dtype=np.float32).reshape(-1)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the wave {path}: {exc}") from exc
        if len(values) != self.config.length:
            raise ValueError(f"{path} holds {len(values)} values; a wave has {self.config.length}")
        return torch.from_numpy(values)[None]

    def check_tokenizer(self, tokenizer) -> None:
        """Waves swing below zero: a tokenizer whose output is a sigmoid (values in [0, 1]) cannot give them back."""
        if getattr(getattr(tokenizer, "config", None), "output", None) == "sigmoid":
            raise ValueError("waves lie in [-1.2, 1.2] but the tokenizer's output: sigmoid gives [0, 1]; use output: linear")
