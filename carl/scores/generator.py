"""The implicit generator of sample-based scoring rules (EAR's MLP with AdaLN noise)."""

from __future__ import annotations

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """``x + gate * MLP(LN(x) * (1 + scale) + shift)``, with (shift, scale, gate) from the noise."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor, shift_scale: float) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift * shift_scale, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def init_adaln_mlp(net: nn.Module) -> None:
    """Xavier-uniform linears with zero biases, then zero modulations and output layer: an AdaLN
    MLP (``res_blocks``, ``final_layer``) that starts as the constant 0 (EAR, MAR)."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    zero = [block.adaLN_modulation[-1] for block in net.res_blocks]
    for layer in zero + [net.final_layer.adaLN_modulation[-1], net.final_layer.linear]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class MLPGenerator(nn.Module):
    """Maps a hidden state and a noise vector to a token: ``G(h, eps)``.

    The hidden state runs through the residual stream (``input_proj``); the noise enters every
    block through AdaLN (``noise_embed``), so one hidden state defines a whole distribution.
    Parameter names follow EAR's ``SimpleMLPAdaLN`` so official weights load as they are.
    Modulations and the output layer start at zero (the generator starts as a point mass at 0).
    """

    def __init__(self, *, hidden_dim: int, width: int, depth: int, token_dim: int, noise_dim: int):
        super().__init__()
        self.noise_embed = nn.Linear(noise_dim, width)
        self.input_proj = nn.Linear(hidden_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, token_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_adaln_mlp(self)

    def forward(self, hidden: torch.Tensor, noise: torch.Tensor, shift_scale: float = 1.0) -> torch.Tensor:
        """``hidden (T, C)``, ``noise (K T, E)`` -> tokens ``(K T, D)``: K draws per hidden state,
        row ``k T + t`` from ``hidden[t]``. ``shift_scale`` multiplies the residual blocks' AdaLN
        shift only: EAR's inference temperature."""
        draws, rest = divmod(noise.shape[0], hidden.shape[0])
        if rest:
            raise ValueError(f"{noise.shape[0]} noise rows are not a multiple of {hidden.shape[0]} hidden states")
        x = self.input_proj(hidden).repeat(draws, 1)  # project once, not once per draw
        y = self.noise_embed(noise)
        for block in self.res_blocks:
            x = block(x, y, shift_scale)
        return self.final_layer(x, y)


def draw_noise(
    rows: int, dim: int, kind: str, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(rows, dim)`` generator noise: uniform on [-0.5, 0.5] (EAR's default) or standard normal."""
    device = generator.device if generator is not None else like.device
    if kind == "uniform":
        noise = torch.rand(rows, dim, generator=generator, device=device) - 0.5
    else:
        noise = torch.randn(rows, dim, generator=generator, device=device)
    return noise.to(device=like.device, dtype=like.dtype)
