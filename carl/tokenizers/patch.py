"""A generic patch tokenizer for grids ``(B, C, H, W)`` and sequences ``(B, T, C)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import torch
from einops import rearrange

from carl.ranges import check_ranges
from carl.tokenizers.base import Tokenizer, cell_mask


@dataclass(frozen=True)
class PatchTokenizerConfig:
    """``shape``: one sample, ``(C, H, W)`` for grids or ``(T, C)`` for sequences.
    ``patch``: the patch size per spatial axis, ``(ph, pw)`` or ``(pt,)``.
    ``normalize``: standardise each channel with statistics that ``fit`` estimates."""

    shape: tuple[Annotated[int, at.Ge(1)], ...] = (1, 28, 28)
    patch: tuple[Annotated[int, at.Ge(1)], ...] = (4, 4)
    normalize: bool = True

    def __post_init__(self) -> None:
        check_ranges(self)
        spatial = self.shape[1:] if len(self.shape) == 3 else self.shape[:1]
        if len(self.shape) not in (2, 3) or len(self.patch) != len(spatial):
            raise ValueError(f"shape {self.shape} takes a patch of {len(spatial)} sizes, got {self.patch}")
        if any(s % p for s, p in zip(spatial, self.patch)):
            raise ValueError(f"patch {self.patch} does not divide the sample shape {self.shape}")


class PatchTokenizer(Tokenizer):
    """Cuts each sample into non-overlapping patches; one token holds a patch's values.

    A ``(C, H, W)`` grid with patch ``(ph, pw)`` gives ``N = H/ph * W/pw`` tokens of
    ``D = C*ph*pw`` values, in raster order; a ``(T, C)`` sequence with patch ``(pt,)`` gives
    ``N = T/pt`` tokens of ``D = pt*C``. With ``normalize``, each channel is standardised by a
    mean and standard deviation that :meth:`fit` estimates and the buffers keep.
    """

    Config = PatchTokenizerConfig

    def __init__(self, config: PatchTokenizerConfig):
        super().__init__()
        self.config = config
        self.is_grid = len(config.shape) == 3
        channels = config.shape[0] if self.is_grid else config.shape[1]
        spatial = config.shape[1:] if self.is_grid else config.shape[:1]
        self.grid = tuple(s // p for s, p in zip(spatial, config.patch))
        self.num_tokens = math.prod(self.grid)
        self.token_dim = channels * math.prod(config.patch)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config.shape)

    @property
    def needs_fit(self) -> bool:
        return self.config.normalize

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        if not self.config.normalize:
            return
        dims = (0, 2, 3) if self.is_grid else (0, 1)
        self.mean.copy_(x.float().mean(dims))
        self.std.copy_(x.float().std(dims).clamp_min(1e-6))

    def _channel_view(self, stat: torch.Tensor) -> torch.Tensor:
        return stat.view(1, -1, 1, 1) if self.is_grid else stat.view(1, 1, -1)

    def token_mask(self, known: torch.Tensor) -> torch.Tensor:
        """A patch's token is known when every value of the patch is, in every channel."""
        spatial = known.all(dim=1) if self.is_grid else known.all(dim=-1)  # (B, H, W) or (B, T)
        return cell_mask(spatial, self.grid)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self._channel_view(self.mean)) / self._channel_view(self.std)
        if self.is_grid:
            ph, pw = self.config.patch
            return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=ph, pw=pw)  # (B, N, D)
        return rearrange(x, "b (t pt) c -> b t (pt c)", pt=self.config.patch[0])  # (B, N, D)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.is_grid:
            ph, pw = self.config.patch
            x = rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=self.grid[0], ph=ph, pw=pw)
        else:
            x = rearrange(tokens, "b t (pt c) -> b (t pt) c", pt=self.config.patch[0])
        return x * self._channel_view(self.std) + self._channel_view(self.mean)
