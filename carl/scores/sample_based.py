"""Sample-based scoring rules: an implicit MLP generator scored from M draws per target."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types as at
import torch
from einops import rearrange

from carl.ranges import check_ranges
from carl.scores.base import Guidance, ScoringRule
from carl.scores.generator import MLPGenerator, draw_noise


@dataclass(frozen=True)
class SampleScoreConfig:
    """``train_temperature``: weight of the diversity term (1 for the proper score).
    ``num_samples``: generator draws per target (M). ``batch_mul``: repeats of each token, each
    with its own M draws (EAR uses 2). ``depth``/``width``: the MLP generator. ``noise``: its
    input noise, ``noise_dim`` values uniform in [-0.5, 0.5] or Gaussian."""

    train_temperature: Annotated[float, at.Gt(0)] = 1.0
    num_samples: Annotated[int, at.Ge(2)] = 2  # the diversity term needs two draws
    batch_mul: Annotated[int, at.Ge(1)] = 2
    depth: Annotated[int, at.Ge(1)] = 3
    width: Annotated[int, at.Ge(1)] = 256
    noise_dim: Annotated[int, at.Ge(1)] = 64
    noise: Literal["uniform", "gaussian"] = "uniform"

    def __post_init__(self) -> None:
        check_ranges(self)


class SampleScore(ScoringRule):
    """Base of the rules that score an implicit generator ``G(h, noise)`` from its draws.

    Subclasses define :meth:`score_draws`, a fair (unbiased) estimate of the negatively oriented
    score from ``M`` draws. ``loss`` returns twice that estimate, averaged over the ``batch_mul``
    repeats (the factor 2 makes the energy score at M = 2 read as EAR's loss).
    Sampling feeds fresh noise through the generator; the inference temperature scales only the
    AdaLN shifts of its residual blocks; guidance mixes the hidden states,
    ``h = s h_cond + (1 - s) h_uncond``.
    """

    Config = SampleScoreConfig

    def __init__(self, config: SampleScoreConfig, *, hidden_dim: int, token_dim: int):
        super().__init__()
        self.config = config
        self.token_dim = token_dim
        self.train_temperature = config.train_temperature
        self.net = MLPGenerator(
            hidden_dim=hidden_dim, width=config.width, depth=config.depth, token_dim=token_dim, noise_dim=config.noise_dim
        )

    @abstractmethod
    def score_draws(self, draws: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Fair estimate of the score from ``draws (M, ..., D)`` of each ``target (..., D)``; shape ``(...)``."""

    def set_train_temperature(self, temperature: float) -> None:
        self.train_temperature = temperature

    def _noise(self, rows: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return draw_noise(rows, self.config.noise_dim, self.config.noise, like, generator)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m, r = self.config.num_samples, self.config.batch_mul
        draws = self.net(hidden, self._noise(m * r * hidden.shape[0], hidden))
        draws = rearrange(draws.float(), "(m r t) d -> m r t d", m=m, r=r)  # (M, R, T, D)
        return self.score_draws(draws, target.float()).mean(0) * 2.0

    @torch.no_grad()
    def sample(self, hidden, *, temperature=1.0, guidance: Guidance | None = None, generator=None):
        if guidance is not None:
            hidden = guidance.mix(hidden)
        return self.net(hidden, self._noise(hidden.shape[0], hidden, generator), temperature).float()


def pairs(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)`` of the pairs ``i < j`` among M draws. The mean over them equals the
    sum over ``i != j`` divided by ``M (M - 1)``; skipping the diagonal also keeps gradients of
    ``|0|^a`` finite."""
    first, second = torch.triu_indices(m, m, offset=1, device=device)
    return first, second
