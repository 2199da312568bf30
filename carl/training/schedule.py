"""How a recipe's ``train`` section becomes optimizer steps: batching over processes and
accumulation, the learning rate from the batch size, and its warm-up and decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

from carl.config import TrainConfig
from carl.errors import CarlError


@dataclass
class Batching:
    micro_batch: int  # per device and forward pass
    accumulation: int  # forward passes per optimizer step


def plan_batching(train: TrainConfig, num_processes: int) -> Batching:
    """Reach ``global_batch`` samples per optimizer step on any number of devices."""
    if train.micro_batch is None:
        if train.global_batch % num_processes:
            raise CarlError(f"train.global_batch {train.global_batch} is not divisible by {num_processes} processes")
        return Batching(train.global_batch // num_processes, 1)
    per_step = train.micro_batch * num_processes
    if train.global_batch % per_step:
        raise CarlError(
            f"train.global_batch {train.global_batch} is not a multiple of train.micro_batch x processes = {per_step}"
        )
    return Batching(train.micro_batch, train.global_batch // per_step)


def learning_rate(train: TrainConfig) -> float:
    """``train.lr``, or ``base_lr`` scaled from a batch of 256 by the linear or square-root rule."""
    if train.lr is not None:
        return train.lr
    ratio = train.global_batch / 256
    return train.base_lr * (ratio if train.lr_scaling == "linear" else math.sqrt(ratio))


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
