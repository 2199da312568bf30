"""Conditioners: a condition -> ``buffer`` condition tokens ``(B, S, C)`` that prefix the sequence.

Each conditioner also owns the learned "unconditional" embedding that classifier-free guidance
mixes against, and the label dropout that trains it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import torch
from einops import repeat
from torch import nn

from carl.hookspecs import hookimpl
from carl.ranges import check_ranges


class Conditioner(nn.Module, ABC):
    """Turns a batch of conditions into ``buffer`` tokens of width ``C``.

    ``forward(condition, batch_size, drop)``: ``condition=None`` gives the unconditional tokens for
    the whole batch; ``drop (B,)`` bool replaces the chosen rows by the unconditional embedding.
    Constructors take ``(config, *, width)``.
    """

    buffer: int
    drop_prob: float = 0.0

    @abstractmethod
    def forward(
        self, condition: torch.Tensor | None, batch_size: int, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """-> condition tokens ``(B, buffer, C)``."""

    def sample_drop(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Which rows to train unconditionally (label dropout), ``(B,)`` bool."""
        gen_device = generator.device if generator is not None else device
        return (torch.rand(batch_size, generator=generator, device=gen_device) < self.drop_prob).to(device)

    def parse(self, values: list[str]) -> torch.Tensor | None:
        """Conditions from command-line strings (``carl sample --labels``)."""
        raise ValueError(f"{type(self).__name__} takes no conditions")

    def grid_conditions(self, rows: int) -> torch.Tensor | None:
        """One condition per row of a sample grid (``None``: unconditional rows)."""
        return None


@dataclass(frozen=True)
class ClassConditionerConfig:
    """``num_classes`` labels; ``buffer`` copies of the class embedding (64 in EAR/MAR);
    ``label_drop``: share of training rows made unconditional (0.1 in EAR/MAR)."""

    num_classes: Annotated[int, at.Ge(1)] = 10
    buffer: Annotated[int, at.Ge(1)] = 64
    label_drop: Annotated[float, at.Interval(ge=0, lt=1)] = 0.1

    def __post_init__(self) -> None:
        check_ranges(self)


class ClassConditioner(Conditioner):
    """Class labels ``(B,)`` long -> the class embedding repeated ``buffer`` times.

    The unconditional embedding ``fake_latent`` stands in for dropped labels (names as in EAR/MAR).
    """

    Config = ClassConditionerConfig

    def __init__(self, config: ClassConditionerConfig, *, width: int):
        super().__init__()
        self.config = config
        self.buffer = config.buffer
        self.drop_prob = config.label_drop
        self.class_emb = nn.Embedding(config.num_classes, width)
        self.fake_latent = nn.Parameter(torch.zeros(1, width))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        nn.init.normal_(self.class_emb.weight, std=0.02)
        nn.init.normal_(self.fake_latent, std=0.02)

    def forward(self, condition, batch_size, drop=None):
        if condition is None:
            embedding = self.fake_latent.expand(batch_size, -1)
        else:
            self._check_labels(condition)
            embedding = self.class_emb(condition)  # (B, C)
            if drop is not None:
                embedding = torch.where(drop[:, None], self.fake_latent.to(embedding.dtype), embedding)
        # contiguous: a copy, not a view of the parameter (views of parameters made under no_grad
        # still claim requires_grad, which confuses module trackers such as FlopCounterMode)
        return repeat(embedding, "b c -> b s c", s=self.buffer).contiguous()

    def _check_labels(self, condition: torch.Tensor) -> None:
        in_range = (condition >= 0) & (condition < self.config.num_classes)
        if condition.device.type == "cpu":
            if not in_range.all():
                raise ValueError(f"class labels must lie in [0, {self.config.num_classes}), got {condition.tolist()}")
        else:  # an `if` on a device tensor waits for the device every step; this assert does not
            torch._assert_async(in_range.all(), f"class labels must lie in [0, {self.config.num_classes})")

    def parse(self, values):
        labels = torch.tensor([int(v) for v in values], dtype=torch.long)
        self._check_labels(labels)  # on the CPU: a clear error before any device sees them
        return labels

    def grid_conditions(self, rows):
        return torch.arange(rows) % self.config.num_classes


@dataclass(frozen=True)
class NoConditionerConfig:
    buffer: Annotated[int, at.Ge(1)] = 1

    def __post_init__(self) -> None:
        check_ranges(self)


class NoConditioner(Conditioner):
    """Unconditional models: ``buffer`` learned start tokens."""

    Config = NoConditionerConfig

    def __init__(self, config: NoConditionerConfig, *, width: int):
        super().__init__()
        self.config = config
        self.buffer = config.buffer
        self.start = nn.Parameter(torch.zeros(1, width))
        nn.init.normal_(self.start, std=0.02)

    def forward(self, condition, batch_size, drop=None):
        return repeat(self.start, "1 c -> b s c", b=batch_size, s=self.buffer).contiguous()


@hookimpl
def register_conditioners(register):
    register("class", ClassConditioner)
    register("none", NoConditioner)
