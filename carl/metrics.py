"""Metrics evaluated during training (``eval`` section of a recipe) and by plugins' commands."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import torch

from carl.hookspecs import hookimpl
from carl.ranges import check_ranges


class Metric(ABC):
    """Scores a model: ``compute(model, recipe)`` -> ``{"name": value}``, logged as ``eval/name``.
    Constructors take the metric's ``Config``. Runs on the main process with the EMA weights."""

    @abstractmethod
    def compute(self, model, recipe) -> dict[str, float]:
        """Evaluate ``model`` (in eval mode, on its device) trained from ``recipe``."""


@dataclass(frozen=True)
class LossConfig:
    """``split``: the data split to score; ``num_items``: how many of its first items."""

    split: str = "train"
    num_items: Annotated[int, at.Ge(1)] = 1024
    batch_size: Annotated[int, at.Ge(1)] = 64

    def __post_init__(self) -> None:
        check_ranges(self)


class HeldOutLoss(Metric):
    """The model's mean loss (its scoring rule) on the first ``num_items`` items of a data split,
    with a fixed seed for the order's plans and the rule's noise: comparable across steps."""

    Config = LossConfig

    def __init__(self, config: LossConfig):
        self.config = config

    @torch.no_grad()
    def compute(self, model, recipe) -> dict[str, float]:
        dataset = recipe.data.build("datasets").dataset(self.config.split)
        count = min(len(dataset), self.config.num_items)
        device = next(model.parameters()).device
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            total = 0.0
            for start in range(0, count, self.config.batch_size):
                rows = dataset[start : min(start + self.config.batch_size, count)]
                batch = {k: v.to(device) for k, v in rows.items() if isinstance(v, torch.Tensor)}
                total += model.loss(batch).item() * len(next(iter(batch.values())))
        finally:
            torch.random.set_rng_state(state)
        return {f"loss_{self.config.split}": total / count}


@hookimpl
def register_metrics(register):
    register("loss", HeldOutLoss)
