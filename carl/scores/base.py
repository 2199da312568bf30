"""The ScoringRule interface: a distribution head, its proper score as loss, and its sampler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance for one sampling call: the unconditional hidden states
    ``uncond`` (same shape as the conditional ones) and the guidance ``scale`` (1 = none)."""

    uncond: torch.Tensor
    scale: float

    def mix(self, cond: torch.Tensor) -> torch.Tensor:
        """``scale * cond + (1 - scale) * uncond``: guidance applied to whatever is mixed."""
        return self.scale * cond + (1.0 - self.scale) * self.uncond


def guidance_scale(cfg: float, schedule: str, known_after: int, num_tokens: int) -> float:
    """The guidance scale of a generation step after which ``known_after`` of ``num_tokens`` are known.

    ``linear`` is MAR's and EAR's schedule (after Muse), ``1 + (cfg - 1) (N - m) / N`` with ``m``
    the count still masked after the step, at least 1: the official samplers clamp the next
    step's mask length to 1 even at the last step, so the full ``cfg`` is never reached (the last
    step of 16 tokens at cfg 3 uses 2.875). ``constant`` is ``cfg`` at every step.
    """
    if schedule == "constant":
        return cfg
    masked = max(1, num_tokens - known_after)
    return 1.0 + (cfg - 1.0) * (num_tokens - masked) / num_tokens


class ScoringRule(nn.Module, ABC):
    """A per-token distribution head trained by a proper scoring rule.

    The head maps a backbone hidden state ``(M, C)`` to a distribution over tokens ``(M, D)``.
    ``loss`` is *negatively oriented*: an unbiased estimate of the negative score (lower is
    better), one value per token, so callers choose the reduction. ``sample`` draws one token per
    hidden state; guidance is the rule's business (what gets mixed differs between rules).

    Constructors take ``(config, *, hidden_dim, token_dim)``.
    """

    strictly_proper: bool = True

    @abstractmethod
    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(M, C)`` and targets ``(M, D)`` -> per-token loss ``(M,)``."""

    @abstractmethod
    def sample(
        self,
        hidden: torch.Tensor,
        *,
        temperature: float = 1.0,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(M, C)`` -> one sampled token each, ``(M, D)`` float32."""

    def set_train_temperature(self, temperature: float) -> None:
        """Training-time temperature, for rules that have one (the energy score's diversity weight)."""
        if temperature != 1.0:
            raise ValueError(f"{type(self).__name__} has no train temperature; got {temperature}")
