"""Per-channel statistics of a tokenizer's tokens (what latent normalisation is computed from)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenStatistics:
    """Per-channel ``mean`` and ``std`` ``(D,)`` of tokens, and the ``count`` of tokens measured."""

    mean: torch.Tensor
    std: torch.Tensor
    count: int

    @property
    def overall_std(self) -> float:
        """The standard deviation of all values together (channels weigh equally)."""
        second = (self.std**2 + self.mean**2).mean()
        return float((second - self.mean.mean() ** 2).clamp_min(0).sqrt())

    def describe(self) -> str:
        return (f"{self.count} tokens: mean {self.mean.mean():+.4f} (per channel {_fmt(self.mean)}), "
                f"std {self.overall_std:.4f} (per channel {_fmt(self.std)})")


def _fmt(values: torch.Tensor, limit: int = 8) -> str:
    shown = ", ".join(f"{v:.3f}" for v in values[:limit].tolist())
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
