"""The energy score with an implicit MLP generator (EAR)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import torch

from carl.scores.sample_based import SampleScore, SampleScoreConfig, pairs


@dataclass(frozen=True)
class EnergyScoreConfig(SampleScoreConfig):
    """``alpha``: the distance exponent in (0, 2]; the other options: :class:`SampleScoreConfig`."""

    alpha: Annotated[float, at.Interval(gt=0, le=2)] = 1.0  # strictly proper in (0, 2)


class EnergyScore(SampleScore):
    r"""Energy score of an implicit generator (Gneiting & Raftery 2007; EAR, Shao et al. 2025).

    For a predictive distribution P and an observation y,

        ES(P, y) = E ||X - y||^a - 1/2 E ||X - X'||^a,   X, X' ~ P i.i.d., a in (0, 2),

    strictly proper for a in (0, 2); at a = 2 it only sees the mean (proper, not strictly).
    With M generator draws x_1..x_M the fair estimate is

        ES_hat = 1/M sum_i ||x_i - y||^a - t / (2 M (M - 1)) sum_{i != j} ||x_i - x_j||^a,

    where the train temperature t (1 for the proper score) weights the diversity term.
    ``loss`` returns 2 * ES_hat, which for M = 2 is EAR's ``|x1 - y|^a + |x2 - y|^a - t |x1 - x2|^a``.
    """

    Config = EnergyScoreConfig

    def __init__(self, config: EnergyScoreConfig, *, hidden_dim: int, token_dim: int):
        super().__init__(config, hidden_dim=hidden_dim, token_dim=token_dim)
        self.strictly_proper = config.alpha < 2.0
        if not self.strictly_proper:
            warnings.warn("energy score with alpha = 2 is proper but not strictly proper: it only matches the mean", stacklevel=2)

    def score_draws(self, draws: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return energy_score(draws, target, self.config.alpha, self.train_temperature)


def energy_score(draws: torch.Tensor, target: torch.Tensor, alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """Fair energy-score estimate from ``draws (M, ..., D)`` of each ``target (..., D)``; shape ``(...)``."""
    first, second = pairs(draws.shape[0], draws.device)
    to_target = torch.linalg.vector_norm(draws - target, dim=-1).pow(alpha).mean(0)
    diversity = torch.linalg.vector_norm(draws[first] - draws[second], dim=-1).pow(alpha).mean(0)
    return to_target - 0.5 * temperature * diversity
