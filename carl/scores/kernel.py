"""Kernel scores (MMD to the observation), from the draws of the implicit generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types as at
import torch

from carl.scores.sample_based import SampleScore, SampleScoreConfig, pairs

CHARACTERISTIC = {"gaussian": True, "laplacian": True, "energy": True, "linear": False}


@dataclass(frozen=True)
class KernelScoreConfig(SampleScoreConfig):
    """``kernel``: ``gaussian`` exp(-|x-y|^2 / 2h^2), ``laplacian`` exp(-|x-y| / h), ``energy``
    -|x-y|^alpha, or ``linear`` x.y (not characteristic). ``bandwidth``: h. ``alpha``: the energy
    kernel's exponent in (0, 2)."""

    kernel: Literal["gaussian", "laplacian", "energy", "linear"] = "gaussian"
    bandwidth: Annotated[float, at.Gt(0)] = 1.0
    alpha: Annotated[float, at.Interval(gt=0, lt=2)] = 1.0  # the energy kernel is characteristic on (0, 2)


class KernelScore(SampleScore):
    r"""Kernel score of a positive-definite kernel k (Gneiting & Raftery 2007, sec. 5; Dawid 2007):

        S(P, y) = 1/2 E k(X, X') - E k(X, y) + 1/2 k(y, y) = 1/2 MMD_k^2(P, delta_y),

    negatively oriented and estimated fairly from M draws (train temperature t on the first term).
    It is proper for every such kernel and strictly proper exactly when the kernel is
    characteristic (its MMD separates all distributions): the Gaussian and Laplacian kernels and
    the energy kernel -|x - y|^a with a in (0, 2) are; the ``linear`` kernel is not (it only
    compares means, like the energy score at a = 2). With the energy kernel the loss equals the
    energy score's. ``loss`` returns 2 S, like every sample-based rule.
    """

    Config = KernelScoreConfig

    def __init__(self, config: KernelScoreConfig, *, hidden_dim: int, token_dim: int):
        super().__init__(config, hidden_dim=hidden_dim, token_dim=token_dim)
        self.strictly_proper = CHARACTERISTIC[config.kernel]

    def kernel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``k(x, y)`` over the last dimension."""
        name, h = self.config.kernel, self.config.bandwidth
        if name == "linear":
            return (x * y).sum(-1)
        distance = torch.linalg.vector_norm(x - y, dim=-1)
        if name == "gaussian":
            return torch.exp(-0.5 * (distance / h) ** 2)
        if name == "laplacian":
            return torch.exp(-distance / h)
        return -distance.pow(self.config.alpha)

    def score_draws(self, draws: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        first, second = pairs(draws.shape[0], draws.device)
        similarity = self.kernel(draws[first], draws[second]).mean(0)
        fit = self.kernel(draws, target).mean(0)
        return 0.5 * self.train_temperature * similarity - fit + 0.5 * self.kernel(target, target)
