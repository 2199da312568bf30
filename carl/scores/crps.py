"""CRPS per dimension, from the draws of the implicit generator."""

from __future__ import annotations

import torch

from carl.scores.sample_based import SampleScore, pairs


class CRPSScore(SampleScore):
    r"""Continuous ranked probability score per dimension, summed over the D dimensions
    (Matheson & Winkler 1976; Gneiting & Raftery 2007, eq. 21):

        CRPS(P, y) = sum_d ( E |X_d - y_d| - 1/2 E |X_d - X'_d| ),   X, X' ~ P i.i.d.,

    estimated fairly from M draws like the energy score (train temperature t on the second term).
    Each term is the energy score of one marginal, so the sum is strictly proper for the
    *marginals* only: on tokens of D > 1 values it cannot tell a distribution from another with
    the same marginals and a different dependence between dimensions. It is therefore declared
    strictly proper only for D = 1. Cheaper than the energy score's norms and robust per dimension.
    """

    def __init__(self, config, *, hidden_dim: int, token_dim: int):
        super().__init__(config, hidden_dim=hidden_dim, token_dim=token_dim)
        self.strictly_proper = token_dim == 1

    def score_draws(self, draws: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return crps(draws, target, self.train_temperature)


def crps(draws: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Fair CRPS estimate summed over the last dimension: ``draws (M, ..., D)``, ``target (..., D)`` -> ``(...)``."""
    first, second = pairs(draws.shape[0], draws.device)
    to_target = (draws - target).abs().mean(0)
    diversity = (draws[first] - draws[second]).abs().mean(0)
    return (to_target - 0.5 * temperature * diversity).sum(-1)
