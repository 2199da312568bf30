"""KL-16: the KL-regularised convolutional autoencoder of LDM at stride 16, as MAR and EAR use it.

The module layout (parameter names and shapes) is that of MAR's ``kl16.ckpt``, so its weights
load as they are. Images in [0, 1] are mapped to [-1, 1]; 256 x 256 pixels become 16 x 16
latents of 16 channels, i.e. 256 tokens of 16 values, multiplied by ``scale`` (0.2325).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from pathlib import Path

import annotated_types as at
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from carl.errors import FieldError
from carl.ranges import check_ranges
from carl.tokenizers.base import Tokenizer, cell_mask
from carl.weights import load_state_file, load_strict, resolve_weights

GROUPS = 32  # of every GroupNorm


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3, twice, plus a (1x1 when the width changes) shortcut."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.norm1 = group_norm(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with 1x1 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=x.shape[2]))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as LDM trained it


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks (each followed by attention when the
    level has it) and an optional resampling."""

    def __init__(self, channels_in: int, channels_out: int, blocks: int, attention: bool, resample: type | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(channels_in if i == 0 else channels_out, channels_out) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(channels_out) for _ in range(blocks)) if attention else nn.ModuleList()
        if resample is Downsample:
            self.downsample = Downsample(channels_out)
        elif resample is Upsample:
            self.upsample = Upsample(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


class Middle(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], blocks: int, attn_levels: tuple[int, ...], z_channels: int):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(([ch] + widths)[i], w, blocks, i in attn_levels, Downsample if i < last else None) for i, w in enumerate(widths)
        )
        self.mid = Middle(widths[-1])
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    """Mirror of the encoder with one more res block per level and no attention outside the middle."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], blocks: int, z_channels: int):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = Middle(widths[-1])
        # up[i] works at the resolution of encoder level i; it runs from the last level to the first
        inputs = [*widths[1:], widths[-1]]
        self.up = nn.ModuleList(
            Level(inputs[i], w, blocks + 1, False, Upsample if i > 0 else None) for i, w in enumerate(widths)
        )
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


@dataclass(frozen=True)
class KL16Config:
    """``weights``: MAR's ``kl16.ckpt``, a ``.safetensors`` file, a Hub repo (``user/repo`` or
    ``user/repo/file.safetensors``) or None for random weights (tests, demos). ``image_size``:
    square input side. ``scale``: latent scale factor (0.2325 for KL-16). ``sample_posterior``:
    draw latents from the posterior in training (MAR/EAR) instead of taking its mean.
    ``decode_chunk``: images decoded (and encoded) per call, to bound memory. The architecture
    fields default to KL-16's; smaller values give a small random autoencoder for CPU demos."""

    weights: str | None = None
    image_size: Annotated[int, at.Ge(1)] = 256
    scale: Annotated[float, at.Gt(0)] = 0.2325
    sample_posterior: bool = True
    decode_chunk: Annotated[int, at.Ge(1)] = 32
    ch: Annotated[int, at.Ge(1)] = 128
    ch_mult: tuple[Annotated[int, at.Ge(1)], ...] = (1, 1, 2, 2, 4)
    num_res_blocks: Annotated[int, at.Ge(1)] = 2
    attn_levels: tuple[Annotated[int, at.Ge(0)], ...] = (4,)
    z_channels: Annotated[int, at.Ge(1)] = 16

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.ch_mult:
            raise FieldError("ch_mult", "needs at least one level")
        if any(self.ch * m % GROUPS for m in (1, *self.ch_mult)):  # 1: conv_in's width, normed by the first block
            raise FieldError("ch", f"{self.ch} times each of ch_mult {self.ch_mult}, and {self.ch} itself, must be a multiple of {GROUPS} "
                             "(the GroupNorm groups)")
        if self.image_size % self.stride:
            raise FieldError("image_size", f"{self.image_size} is not a multiple of the stride {self.stride}")
        if any(level >= len(self.ch_mult) for level in self.attn_levels):
            raise FieldError("attn_levels", f"{self.attn_levels} names a level beyond the {len(self.ch_mult)} of ch_mult")

    @property
    def stride(self) -> int:
        """Pixels per token side: one halving per level after the first."""
        return 2 ** (len(self.ch_mult) - 1)


class KL16Tokenizer(Tokenizer):
    """Images ``(B, 3, H, W)`` in [0, 1] <-> tokens ``(B, (H/s) (W/s), z_channels)``, s = 2^(levels - 1).

    ``moments`` gives the posterior (mean and log-variance, log-variance clamped to [-30, 20])
    so that a token cache can store it and sample at training time; ``from_cache`` does that
    and picks the horizontally flipped moments for a random half of the batch.
    Weights are not read at construction: :meth:`prepare` loads ``weights`` (the trainer and
    ``carl cache`` call it); a model folder carries them in its own weights file.
    """

    Config = KL16Config

    def __init__(self, config: KL16Config):
        super().__init__()
        self.config = config
        self.grid = config.image_size // config.stride
        self.token_dim = config.z_channels
        self.num_tokens = self.grid**2
        c = config
        self.encoder = Encoder(c.ch, c.ch_mult, c.num_res_blocks, c.attn_levels, c.z_channels)
        self.decoder = Decoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)

    # -- weights -------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.config.image_size, self.config.image_size)

    def prepare(self) -> None:
        if self.config.weights is not None:
            self.load_weights(self.config.weights)

    def load_weights(self, reference: str | Path) -> None:
        """Load a checkpoint strictly: every key used, none missing, every shape equal."""
        path = resolve_weights(reference, default_filename="kl16.ckpt")
        load_strict(self, load_state_file(path), source=path)

    # -- encoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior ``(B, 2 z, h, w)``: mean then log-variance (clamped), of images in [0, 1]."""
        out = [self.quant_conv(self.encoder(chunk * 2 - 1)) for chunk in images.split(self.config.decode_chunk)]
        mean, log_var = torch.cat(out).float().chunk(2, dim=1)
        return torch.cat([mean, log_var.clamp(-30.0, 20.0)], dim=1)

    def tokens_from_moments(self, moments: torch.Tensor, sample: bool, generator: torch.Generator | None = None):
        mean, log_var = moments.float().chunk(2, dim=1)
        latent = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device if generator is None else generator.device)
            latent = mean + torch.exp(0.5 * log_var) * noise.to(mean.device)
        return rearrange(latent * self.config.scale, "b c h w -> b (h w) c")

    def token_mask(self, known: torch.Tensor) -> torch.Tensor:
        """A token is known when its whole 16 x 16 block of pixels is (every channel)."""
        return cell_mask(known.all(dim=1), (self.grid, self.grid))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens_from_moments(self.moments(x), sample=self.config.sample_posterior and self.training)

    def cache(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a token cache stores per image: the moments of the image and of its mirror image."""
        return {"moments": self.moments(x), "moments_flip": self.moments(x.flip(-1))}

    def from_cache(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        if "moments" not in batch:  # ready-made tokens
            return super().from_cache(batch, generator)
        moments, flipped = batch["moments"], batch["moments_flip"]
        flip = torch.rand(len(moments), generator=generator, device=moments.device if generator is None else generator.device)
        pick = (flip < 0.5).to(moments.device)[:, None, None, None]
        return self.tokens_from_moments(torch.where(pick, flipped, moments), sample=self.config.sample_posterior, generator=generator)

    def renormalize(self, stats) -> dict:
        """KL-16's normalisation is one scale in its config, no shift: the scale that gives
        unit-variance tokens (MAR's 0.2325 was found this way on ImageNet)."""
        return {"scale": self.config.scale / max(stats.overall_std, 1e-8)}

    # -- decoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> images in [0, 1] (unclamped), ``decode_chunk`` images at a time."""
        latent = rearrange(tokens.float() / self.config.scale, "b (h w) c -> b c h w", h=self.grid)
        dtype = self.post_quant_conv.weight.dtype
        out = [self.decoder(self.post_quant_conv(z.to(dtype))).float() for z in latent.split(self.config.decode_chunk)]
        return (torch.cat(out) + 1) / 2

