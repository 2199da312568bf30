"""The log score of explicit densities: a diagonal Gaussian and a Gaussian mixture (GIVT)."""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from carl.errors import FieldError
from carl.ranges import check_ranges
from carl.scores.base import Guidance, ScoringRule

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class LogScoreConfig:
    """``depth``/``width``: the MLP from the hidden state to the density's parameters.
    ``min_std``/``max_std``: smooth bounds of the predicted standard deviations (numerical
    safety). ``batch_mul`` exists only to refuse values other than 1: the log score's loss draws
    no noise, so repeating a token would only repeat work."""

    depth: Annotated[int, at.Ge(1)] = 2
    width: Annotated[int, at.Ge(1)] = 256
    min_std: Annotated[float, at.Gt(0)] = 1e-3
    max_std: Annotated[float, at.Gt(0)] = 10.0
    batch_mul: Annotated[int, at.Ge(1)] = 1

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.batch_mul != 1:
            raise FieldError("batch_mul", "must be 1 for the log score: its loss is deterministic given the hidden state")
        if not self.min_std < self.max_std:
            raise FieldError("max_std", f"{self.max_std} must exceed min_std {self.min_std}")


def bounded_log_std(raw: torch.Tensor, min_std: float, max_std: float) -> torch.Tensor:
    """``raw`` squashed smoothly into ``[log min_std, log max_std]`` (about 0 at ``raw = 0``)."""
    low, high = math.log(min_std), math.log(max_std)
    x = low + F.softplus(raw - low)
    return high - F.softplus(high - x)


def gaussian_log_density(target: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(target; mean, diag(exp(log_std))^2)`` summed over the last dimension."""
    z = (target - mean) * torch.exp(-log_std)
    return -(0.5 * z.square() + log_std + HALF_LOG_2PI).sum(-1)


def mixture_log_density(
    target: torch.Tensor, log_weight: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """``log sum_k w_k N(target; mean_k, diag(exp(log_std_k))^2)``: ``target (..., D)``,
    ``log_weight (..., K)``, ``mean``/``log_std (..., K, D)`` -> ``(...)``, by log-sum-exp."""
    return (log_weight + gaussian_log_density(target[..., None, :], mean, log_std)).logsumexp(-1)


class ParameterHead(nn.Module):
    """MLP from a hidden state to a density's parameters: ``depth`` SiLU layers of ``width``."""

    def __init__(self, hidden_dim: int, width: int, depth: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(hidden_dim if i == 0 else width, width), nn.SiLU()]
        self.layers = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_dim)
        nn.init.normal_(self.out.weight, std=0.02)  # small but not zero: mixture components must differ
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(hidden))


class LogScore(ScoringRule):
    """Base of the rules whose head outputs an explicit density: ``loss = -log p(target | h)`` in
    nats per token (summed over the token's D values). Guidance mixes the hidden states before
    the head, ``h = s h_cond + (1 - s) h_uncond``."""

    def __init__(self, config: LogScoreConfig, *, hidden_dim: int, token_dim: int, num_params: int):
        super().__init__()
        self.config = config
        self.token_dim = token_dim
        self.head = ParameterHead(hidden_dim, config.width, config.depth, num_params)

    def log_std(self, raw: torch.Tensor) -> torch.Tensor:
        return bounded_log_std(raw, self.config.min_std, self.config.max_std)

    @abstractmethod
    def log_density(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log p(target)`` of the density with head outputs ``params``; shape ``(M,)``."""

    @abstractmethod
    def draw(self, params: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        """One token per row of ``params``."""

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -self.log_density(self.head(hidden).float(), target.float())

    @torch.no_grad()
    def sample(self, hidden, *, temperature=1.0, guidance: Guidance | None = None, generator=None):
        if guidance is not None:
            hidden = guidance.mix(hidden)
        return self.draw(self.head(hidden).float(), temperature, generator)


def standard_normal(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like.device)


@dataclass(frozen=True)
class GaussianScoreConfig(LogScoreConfig):
    """``sigma``: a fixed standard deviation (the head then predicts only the mean; the loss is a
    scaled squared error) or None to predict one per dimension. ``sample_sigma``: a standard
    deviation that replaces the model's at sampling time (EAR, Figure 4); ``temperature`` then
    scales it as usual."""

    sigma: Annotated[float, at.Gt(0)] | None = None
    sample_sigma: Annotated[float, at.Gt(0)] | None = None


class GaussianScore(LogScore):
    r"""Log score of a diagonal Gaussian head (Good 1952; the continuous cross-entropy):

        -log N(y; mu(h), diag sigma(h)^2) = sum_d [ (y_d - mu_d)^2 / (2 sigma_d^2) + log sigma_d + log(2 pi) / 2 ].

    Strictly proper over all densities (the family here is Gaussian, so the best it can do on
    multimodal data is the moment-matched Gaussian: blurry samples, EAR Table 1). Sampling draws
    ``mu + temperature * sigma * eps``.
    """

    Config = GaussianScoreConfig

    def __init__(self, config: GaussianScoreConfig, *, hidden_dim: int, token_dim: int):
        learn_std = config.sigma is None
        super().__init__(config, hidden_dim=hidden_dim, token_dim=token_dim, num_params=token_dim * (1 + learn_std))

    def mean_log_std(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = params[:, : self.token_dim]
        if self.config.sigma is not None:
            return mean, torch.full_like(mean, math.log(self.config.sigma))
        return mean, self.log_std(params[:, self.token_dim :])

    def log_density(self, params, target):
        return gaussian_log_density(target, *self.mean_log_std(params))

    def draw(self, params, temperature, generator):
        mean, log_std = self.mean_log_std(params)
        std = log_std.exp() if self.config.sample_sigma is None else torch.full_like(mean, self.config.sample_sigma)
        return mean + temperature * std * standard_normal(mean.shape, mean, generator)


@dataclass(frozen=True)
class MixtureScoreConfig(LogScoreConfig):
    """``components``: K, the number of diagonal Gaussians in the mixture."""

    components: Annotated[int, at.Ge(1)] = 8


class MixtureScore(LogScore):
    r"""Log score of a K-component diagonal Gaussian mixture head (GIVT, Tschannen et al. 2024):

        -log sum_k pi_k(h) N(y; mu_k(h), diag sigma_k(h)^2),

    computed with log-sum-exp over log-softmax weights and bounded scales. Strictly proper.
    Sampling picks a component by its weight, then draws ``mu_k + temperature * sigma_k * eps``
    (the temperature narrows each component, not the choice among them).
    """

    Config = MixtureScoreConfig

    def __init__(self, config: MixtureScoreConfig, *, hidden_dim: int, token_dim: int):
        num_params = config.components * (1 + 2 * token_dim)
        super().__init__(config, hidden_dim=hidden_dim, token_dim=token_dim, num_params=num_params)

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log weights ``(M, K)``, means and log-stds ``(M, K, D)``."""
        k = self.config.components
        logits, rest = params[:, :k], params[:, k:]
        mean, raw = rearrange(rest, "m (two k d) -> two m k d", two=2, k=k)
        return logits.log_softmax(-1), mean, self.log_std(raw)

    def log_density(self, params, target):
        return mixture_log_density(target, *self.split(params))

    def draw(self, params, temperature, generator):
        log_weight, mean, log_std = self.split(params)
        device = generator.device if generator is not None else params.device
        pick = torch.multinomial(log_weight.exp().to(device), 1, generator=generator).to(params.device)  # (M, 1)
        index = pick[..., None].expand(-1, 1, mean.shape[-1])
        mean, std = mean.gather(1, index)[:, 0], log_std.gather(1, index)[:, 0].exp()
        return mean + temperature * std * standard_normal(mean.shape, mean, generator)
