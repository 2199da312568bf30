"""The Job interface: what a training run trains.

The :class:`carl.training.trainer.Trainer` owns the loop, the output folder, checkpoints, logging and the
accelerate engine; a job says what is trained (a module whose ``forward(batch)`` is the loss),
what the output folder becomes (:meth:`export`), and what is pictured along the way
(:meth:`preview`). A new kind of training is a new job file, not a branch inside the loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from torch import nn

from carl.config import TrainConfig
from carl.data import DataSource
from carl.layout import SAMPLES_FILE


class Job(ABC):
    """A kind of training. Constructed with the validated recipe; ``kind`` names it in logs,
    ``picture`` is the file name of the latest preview in the output folder."""

    kind: str
    picture: str = SAMPLES_FILE

    def __init__(self, cfg):
        self.cfg = cfg

    def dataset(self, source: DataSource):
        """The map-style dataset to train on; default: the data source's ``train`` split."""
        return source.dataset("train")

    @abstractmethod
    def build(self, source: DataSource, dataset, resume: bool) -> nn.Module:
        """The module to train (``forward(batch) -> scalar loss``) on ``dataset`` (made by ``source``),
        checked against the data and with its external state prepared unless ``resume`` (the
        checkpoint then holds all state)."""

    def param_groups(self, module: nn.Module, train: TrainConfig, lr: float) -> list[dict]:
        """AdamW groups; default: weight decay on matrices and kernels, none on biases and norms."""
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
        rest = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": decay, "weight_decay": train.weight_decay, "lr": lr, "lr_scale": 1.0},
                {"params": rest, "weight_decay": 0.0, "lr": lr, "lr_scale": 1.0}]

    def before_step(self, module: nn.Module, epoch: float) -> None:
        """Called before every forward pass with the (fractional) epoch; default: nothing."""

    def evaluate(self, module: nn.Module) -> dict[str, float]:
        """Figures on held-out data for the EMA ``module`` (main process); default: none."""
        return {}

    def finish(self, module: nn.Module, dataset) -> dict[str, str]:
        """Last work on the EMA ``module`` before the final export; returns figures for the card."""
        return {}

    @abstractmethod
    def export(self, module: nn.Module, folder: Path, figures: dict) -> None:
        """Write the EMA ``module`` as the output folder's published form (weights, config, card)."""

    def refresh_card(self, module: nn.Module, folder: Path, figures: dict) -> None:
        """After the last checkpoint already exported ``module``: rewrite what changed since (the
        card, now with the final picture); default: export again."""
        self.export(module, folder, figures)

    def describe_output(self, output: Path) -> tuple[str, str]:
        """What the output folder becomes and how to use it, for the closing summary."""
        return "model folder", f"carl sample {output}"

    def preview(self, module: nn.Module, source: DataSource, path: Path) -> Path | None:
        """Save a picture of what the EMA ``module`` does at ``path``; None if nothing is picturable."""
        return None
