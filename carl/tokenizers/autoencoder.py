"""A convolutional KL autoencoder tokenizer for grids of 1, 2 or 3 spatial dimensions.

The encoder maps a sample to a Gaussian posterior over a latent grid (mean and log-variance,
as in LDM/MAR's KL-16); one token is the latent vector at one grid position. Tokens are the
latents normalised by a per-channel shift and scale that are computed from data after training
(:func:`carl.tokenizers.normalize.measure`), so the autoregressive model sees roughly unit-scale
tokens. Train one with a tokenizer recipe (``carl train mnist-ae``); it is saved as a tokenizer
folder (:mod:`carl.tokenizers.pretrained`) that AR recipes reference with ``path``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types as at
import torch
import torch.nn.functional as F
from torch import nn

from carl.ranges import check_ranges
from carl.tokenizers.base import Tokenizer, cell_mask

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
LOG_VAR_RANGE = (-30.0, 20.0)  # as KL-16: keeps exp(log_var) finite
ARCHITECTURE = ("shape", "channels_last", "widths", "blocks", "latent_channels", "output")


@dataclass(frozen=True)
class AutoencoderConfig:
    """``shape``: one sample, ``(C, *spatial)`` (or ``(*spatial, C)`` with ``channels_last``, as
    time series ``(T, C)`` come). ``widths``: channels per resolution level; each level after the
    first halves every spatial side, so the grid is ``spatial / 2^(levels-1)``. ``blocks``: residual
    blocks per level. ``latent_channels``: values per token. ``output``: ``sigmoid`` for data in
    [0, 1] (pairs with the ``bce`` loss), ``linear`` otherwise. ``sample_posterior``: draw latents
    from the posterior when encoding in training or caching (the mean otherwise).
    ``path``: a tokenizer folder (path, shipped name or Hub repo id) whose weights and latent
    normalisation ``prepare`` loads; architecture fields left unset are read from it, and a set
    field that disagrees with it is an error (with every field set, as in a saved model's
    config.json, the folder is not read until ``prepare``)."""

    shape: tuple[Annotated[int, at.Ge(1)], ...] | None = None
    channels_last: bool | None = None
    widths: tuple[Annotated[int, at.Ge(1)], ...] | None = None
    blocks: Annotated[int, at.Ge(1)] | None = None
    latent_channels: Annotated[int, at.Ge(1)] | None = None
    output: Literal["linear", "sigmoid"] | None = None
    sample_posterior: bool = True
    path: str | None = None

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.path is not None and any(getattr(self, k) is None for k in ARCHITECTURE):
            self.resolved()  # a recipe that disagrees with its tokenizer folder fails at load

    def resolved(self) -> AutoencoderConfig:
        """Architecture fields filled from ``path``'s folder, then from the defaults below."""
        config = self
        if self.path is not None and any(getattr(self, k) is None for k in ARCHITECTURE):
            from carl.tokenizers.pretrained import folder_options

            saved = folder_options(self.path, "autoencoder")
            mismatch = [k for k in ARCHITECTURE if getattr(self, k) is not None and _same(getattr(self, k)) != _same(saved.get(k))]
            if mismatch:
                ours = ", ".join(f"{k}={getattr(self, k)}" for k in mismatch)
                theirs = ", ".join(f"{k}={saved.get(k)}" for k in mismatch)
                raise ValueError(f"the recipe's tokenizer ({ours}; {_token_shape(self, saved)}) disagrees with the "
                                 f"tokenizer folder '{self.path}' ({theirs}; {_token_shape(saved)})")
            config = dataclasses.replace(self, **{k: _same(saved[k]) for k in ARCHITECTURE if getattr(self, k) is None and k in saved})
        defaults = dict(shape=(1, 28, 28), channels_last=False, widths=(32, 64, 128), blocks=1, latent_channels=4, output="linear")
        return dataclasses.replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})


def _same(value):
    return tuple(value) if isinstance(value, list) else value


def _token_shape(config, fallback: dict | None = None) -> str:
    """``tokens N x D`` of a config (a dataclass or a dict), for error messages."""
    get = (lambda k: getattr(config, k)) if not isinstance(config, dict) else config.get
    shape, widths, latent = get("shape"), get("widths"), get("latent_channels")
    if fallback is not None:
        shape, widths, latent = shape or fallback.get("shape"), widths or fallback.get("widths"), latent or fallback.get("latent_channels")
    last = get("channels_last") if get("channels_last") is not None else (fallback or {}).get("channels_last", False)
    if shape is None or widths is None or latent is None:
        return "tokens ?"
    spatial = shape[:-1] if last else shape[1:]
    return f"tokens {math.prod(s // 2 ** (len(widths) - 1) for s in spatial)} x {latent}"


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, dims: int, channels_in: int, channels_out: int):
        super().__init__()
        conv = CONV[dims]
        self.norm1, self.conv1 = _norm(channels_in), conv(channels_in, channels_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(channels_out), conv(channels_out, channels_out, 3, padding=1)
        self.skip = conv(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """``(B, C, *spatial)`` -> posterior moments ``(B, 2 L, *grid)``: mean, then log-variance."""

    def __init__(self, dims: int, channels: int, widths: tuple[int, ...], blocks: int, latent: int):
        super().__init__()
        conv = CONV[dims]
        self.conv_in = conv(channels, widths[0], 3, padding=1)
        layers, previous = [], widths[0]
        for level, width in enumerate(widths):
            for _ in range(blocks):
                layers.append(ResBlock(dims, previous, width))
                previous = width
            if level < len(widths) - 1:
                layers.append(conv(width, width, 3, stride=2, padding=1))
        self.levels = nn.Sequential(*layers)
        self.norm_out = _norm(previous)
        self.conv_out = conv(previous, 2 * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.levels(self.conv_in(x)))))


class Upsample(nn.Module):
    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = CONV[dims](channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """Latents ``(B, L, *grid)`` -> the output before its activation ``(B, C, *spatial)``."""

    def __init__(self, dims: int, channels: int, widths: tuple[int, ...], blocks: int, latent: int):
        super().__init__()
        conv = CONV[dims]
        self.conv_in = conv(latent, widths[-1], 3, padding=1)
        layers, previous = [], widths[-1]
        for level in reversed(range(len(widths))):
            for _ in range(blocks):
                layers.append(ResBlock(dims, previous, widths[level]))
                previous = widths[level]
            if level > 0:
                layers.append(Upsample(dims, previous))
        self.levels = nn.Sequential(*layers)
        self.norm_out = _norm(previous)
        self.conv_out = conv(previous, channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.levels(self.conv_in(z)))))


class AutoencoderTokenizer(Tokenizer):
    """Samples ``shape`` <-> tokens ``(B, N, latent_channels)``, N the latent grid's positions in raster order.

    ``posterior`` and ``decode_latents`` work on raw latents; ``encode``/``decode`` add the
    normalisation ``tokens = (latents - latent_shift) * latent_scale`` (per channel, buffers
    saved with the weights). Trained by the ``tokenizer`` job (:mod:`carl.training.jobs.tokenizer`).
    """

    Config = AutoencoderConfig
    trainable = True

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        config = config.resolved()
        self.config = config
        shape = tuple(config.shape)
        channels, spatial = (shape[-1], shape[:-1]) if config.channels_last else (shape[0], shape[1:])
        if len(spatial) not in CONV:
            raise ValueError(f"shape {shape}: the autoencoder takes 1, 2 or 3 spatial dimensions, got {len(spatial)}")
        factor = 2 ** (len(config.widths) - 1)
        if any(s % factor for s in spatial):
            raise ValueError(f"shape {shape}: every spatial side must be a multiple of the downsampling factor {factor} "
                             f"({len(config.widths)} levels of widths {config.widths})")
        self.dims, self.channels, self.spatial = len(spatial), channels, spatial
        self.grid = tuple(s // factor for s in spatial)
        self.num_tokens = math.prod(self.grid)
        self.token_dim = config.latent_channels
        self.encoder = Encoder(self.dims, channels, config.widths, config.blocks, config.latent_channels)
        self.decoder = Decoder(self.dims, channels, config.widths, config.blocks, config.latent_channels)
        self.register_buffer("latent_shift", torch.zeros(config.latent_channels))
        self.register_buffer("latent_scale", torch.ones(config.latent_channels))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config.shape)

    # -- weights -------------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.config.path is not None:
            from carl.tokenizers.pretrained import load_tokenizer_state

            load_tokenizer_state(self, self.config.path)

    # -- raw latents -----------------------------------------------------------------------------

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(-1, 1) if self.config.channels_last else x

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-variance ``(B, L, *grid)`` of the latents of data ``x``."""
        mean, log_var = self.encoder(self._channels_first(x.float())).chunk(2, dim=1)
        return mean, log_var.clamp(*LOG_VAR_RANGE)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``(B, L, *grid)`` -> the decoder's output before its activation, in the data's layout."""
        out = self.decoder(z)
        return out.movedim(1, -1) if self.config.channels_last else out

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.config.output == "sigmoid" else out

    # -- tokens ----------------------------------------------------------------------------------

    def _to_tokens(self, z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(2).transpose(1, 2)  # (B, N, L)
        return (z - self.latent_shift) * self.latent_scale

    def _from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        z = tokens.float() / self.latent_scale + self.latent_shift  # (B, N, L)
        return z.transpose(1, 2).reshape(len(tokens), self.token_dim, *self.grid)

    def tokens_from_moments(self, mean, log_var, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device if generator is None else generator.device)
            mean = mean + torch.exp(0.5 * log_var) * noise.to(mean.device)
        return self._to_tokens(mean)

    def token_mask(self, known: torch.Tensor) -> torch.Tensor:
        """The token of a latent cell is known when every value of the data cell it sits on (the
        downsampling factor wide, all channels) is known. Its receptive field is wider than that
        cell, so values next to a hole reach it too: the known tokens are encoded from data whose
        hole is whatever ``data`` holds there (fill it with a plausible value, e.g. 0)."""
        spatial = known.all(dim=-1) if self.config.channels_last else known.all(dim=1)
        return cell_mask(spatial, self.grid)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.posterior(x)
        return self.tokens_from_moments(mean, log_var, sample=self.config.sample_posterior and self.training)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.activate(self.decode_latents(self._from_tokens(tokens)))

    def cache(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The posterior (mean and log-variance), so that training draws fresh latents each epoch."""
        mean, log_var = self.posterior(x)
        return {"moments": torch.cat([mean, log_var], dim=1)}

    def from_cache(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        if "moments" not in batch:
            return super().from_cache(batch, generator)
        mean, log_var = batch["moments"].float().chunk(2, dim=1)
        return self.tokens_from_moments(mean, log_var, sample=self.config.sample_posterior, generator=generator)

    # -- normalisation ---------------------------------------------------------------------------

    @torch.no_grad()
    def renormalize(self, stats) -> None:
        """Absorb token statistics measured under the current normalisation, so that tokens become
        zero-mean and unit-variance per channel (state kept in the buffers, saved with the weights)."""
        self.latent_shift.add_(stats.mean.to(self.latent_shift) / self.latent_scale)
        self.latent_scale.div_(stats.std.to(self.latent_scale).clamp_min(1e-8))
        return None
