"""The energy score with an implicit MLP generator (EAR)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange

from carl.scores.base import Guidance, ScoringRule
from carl.scores.generator import MLPGenerator, draw_noise


@dataclass(frozen=True)
class EnergyScoreConfig:
    """``alpha``: distance exponent in (0, 2]. ``train_temperature``: weight of the diversity
    term. ``num_samples``: generator draws per target (M). ``batch_mul``: repeats of each token,
    each with its own M draws (EAR uses 2). ``depth``/``width``: the MLP generator.
    ``noise``: the generator's input noise, ``noise_dim`` values uniform in [-0.5, 0.5] or Gaussian."""

    alpha: float = 1.0
    train_temperature: float = 1.0
    num_samples: int = 2
    batch_mul: int = 2
    depth: int = 3
    width: int = 256
    noise_dim: int = 64
    noise: Literal["uniform", "gaussian"] = "uniform"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 2.0:
            raise ValueError(f"alpha must lie in (0, 2] (strictly proper in (0, 2)), got {self.alpha}")
        if self.num_samples < 2:
            raise ValueError("the energy score needs num_samples >= 2 for its diversity term")
        if self.batch_mul < 1 or self.depth < 1:
            raise ValueError("batch_mul and depth must be >= 1")


class EnergyScore(ScoringRule):
    r"""Energy score of an implicit generator (Gneiting & Raftery 2007; EAR, Shao et al. 2025).

    For a predictive distribution P and an observation y,

        ES(P, y) = E ||X - y||^a - 1/2 E ||X - X'||^a,   X, X' ~ P i.i.d., a in (0, 2),

    strictly proper for a in (0, 2); at a = 2 it only sees the mean (proper, not strictly).
    With M generator draws x_1..x_M the unbiased ("fair") estimate is

        ES_hat = 1/M sum_i ||x_i - y||^a - t / (2 M (M - 1)) sum_{i != j} ||x_i - x_j||^a,

    where the train temperature t (1 for the proper score) weights the diversity term.
    ``loss`` returns 2 * ES_hat (averaged over ``batch_mul`` repeats), which for M = 2 is EAR's
    ``|x1 - y|^a + |x2 - y|^a - t |x1 - x2|^a``. Negatively oriented: lower is better.

    Sampling feeds fresh noise through the generator; the inference temperature scales only the
    AdaLN shifts of the residual blocks; guidance mixes the hidden states,
    ``h = s h_cond + (1 - s) h_uncond``.
    """

    Config = EnergyScoreConfig

    def __init__(self, config: EnergyScoreConfig, *, hidden_dim: int, token_dim: int):
        super().__init__()
        self.config = config
        self.train_temperature = config.train_temperature
        self.strictly_proper = config.alpha < 2.0
        if not self.strictly_proper:
            warnings.warn("energy score with alpha = 2 is proper but not strictly proper: it only matches the mean")
        self.net = MLPGenerator(
            hidden_dim=hidden_dim, width=config.width, depth=config.depth, token_dim=token_dim, noise_dim=config.noise_dim
        )

    def set_train_temperature(self, temperature: float) -> None:
        self.train_temperature = temperature

    def _noise(self, rows: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return draw_noise(rows, self.config.noise_dim, self.config.noise, like, generator)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m, r = self.config.num_samples, self.config.batch_mul
        rows = m * r * hidden.shape[0]
        draws = self.net(hidden, self._noise(rows, hidden))
        draws = rearrange(draws.float(), "(m r t) d -> m r t d", m=m, r=r)  # (M, R, T, D)
        return energy_score(draws, target.float(), self.config.alpha, self.train_temperature).mean(0) * 2.0

    @torch.no_grad()
    def sample(self, hidden, *, temperature=1.0, guidance: Guidance | None = None, generator=None):
        if guidance is not None:
            hidden = guidance.mix(hidden)
        return self.net(hidden, self._noise(hidden.shape[0], hidden, generator), temperature).float()


def energy_score(draws: torch.Tensor, target: torch.Tensor, alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """Fair energy-score estimate from ``draws (M, ..., D)`` of each ``target (..., D)``; shape ``(...)``."""
    first, second = torch.triu_indices(draws.shape[0], draws.shape[0], offset=1, device=draws.device)
    to_target = torch.linalg.vector_norm(draws - target, dim=-1).pow(alpha).mean(0)
    # Mean over pairs i < j equals the sum over i != j divided by M (M - 1); skipping the zero
    # diagonal also keeps the gradient of |0|^a finite for a < 1.
    diversity = torch.linalg.vector_norm(draws[first] - draws[second], dim=-1).pow(alpha).mean(0)
    return to_target - 0.5 * temperature * diversity
