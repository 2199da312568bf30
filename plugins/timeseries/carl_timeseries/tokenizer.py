"""Windows of a multivariate series <-> tokens of P steps x C channels, normalised per series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import torch
from einops import rearrange

from carl.ranges import check_ranges
from carl.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class SeriesConfig:
    """A window of ``length`` steps of ``channels`` values cut into patches of ``patch`` steps.
    Each window is standardised per channel with the mean and spread of its first ``context``
    steps only (the past), so the future never leaks into the scale. ``min_std`` floors the
    spread of flat series; ``relative_min_std`` floors it at that share of the past's mean
    absolute level too (a flat series of any units then standardises alike).

    Missing values (NaN) are allowed: the statistics are those of the observed past steps, and a
    missing step becomes 0 (the past's mean) after standardising. A forecaster reads a history
    shorter than ``context`` left-padded with NaN. Since a padded step then reads exactly like a
    step at the past's mean, ``observed`` appends to each token, per channel, the share of its
    patch's steps that are observed (0 for a patch of padding, 1 for a full one): the model can
    tell a short history from a flat one. A generated token's share is dropped by ``decode``."""

    length: Annotated[int, at.Ge(1)] = 32
    channels: Annotated[int, at.Ge(1)] = 4
    patch: Annotated[int, at.Ge(1)] = 4
    context: Annotated[int, at.Ge(1)] = 24
    min_std: Annotated[float, at.Gt(0)] = 1e-2
    relative_min_std: Annotated[float, at.Ge(0)] = 0.0
    observed: bool = False

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.length % self.patch or self.context % self.patch or not 0 < self.context <= self.length:
            raise ValueError(f"length {self.length} and context {self.context} must be multiples of patch {self.patch}, context <= length")


class SeriesTokenizer(Tokenizer):
    """``(B, length, channels)`` -> ``(B, length / patch, patch * channels)`` tokens (plus
    ``channels`` observed shares with ``observed``).

    ``encode`` standardises with the context's statistics; ``decode`` returns the series in those
    standardised units; :meth:`normalize` / :meth:`denormalize` give and undo the scale, so a
    forecast is read in the original units with the statistics of its own past.
    """

    Config = SeriesConfig

    def __init__(self, config: SeriesConfig):
        super().__init__()
        self.config = config
        self.num_tokens = config.length // config.patch
        self.values_dim = config.patch * config.channels
        self.token_dim = self.values_dim + (config.channels if config.observed else 0)
        self.context_tokens = config.context // config.patch

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, length, C)`` standardised (NaN -> 0), and the past's ``mean`` and ``std`` ``(B, 1, C)``."""
        past = x[:, : self.config.context].float()
        observed = ~torch.isnan(past)
        count = observed.sum(1, keepdim=True)
        filled = torch.where(observed, past, 0.0)
        mean = filled.sum(1, keepdim=True) / count.clamp_min(1)
        spread = torch.where(observed, past - mean, 0.0).square().sum(1, keepdim=True) / (count - 1).clamp_min(1)
        floor = (self.config.relative_min_std * mean.abs()).clamp_min(self.config.min_std)
        std = torch.maximum(spread.sqrt(), floor)
        return torch.nan_to_num((x.float() - mean) / std, nan=0.0), mean, std

    @staticmethod
    def denormalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return x * std + mean

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.config.length, self.config.channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch
        tokens = rearrange(self.normalize(x)[0], "b (n p) c -> b n (p c)", p=p)
        if not self.config.observed:
            return tokens
        share = rearrange((~torch.isnan(x)).float(), "b (n p) c -> b n c p", p=p).mean(-1)
        return torch.cat([tokens, share], dim=-1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(tokens[..., : self.values_dim].float(), "b n (p c) -> b (n p) c", p=self.config.patch)
