"""MaskGIT/MAR masked order: bidirectional attention, many tokens per step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import numpy as np
import torch

from carl.orders.base import Order, Plan, random_permutations
from carl.ranges import check_ranges


@dataclass(frozen=True)
class MaskedOrderConfig:
    """The masking ratio follows a normal centred at 1 with std ``mask_std``, truncated to
    ``[mask_ratio_min, 1]`` (MAR, EAR)."""

    mask_ratio_min: Annotated[float, at.Interval(gt=0, le=1)] = 0.7
    mask_std: Annotated[float, at.Gt(0)] = 0.25

    def __post_init__(self) -> None:
        check_ranges(self)


class MaskedOrder(Order):
    """A random permutation per sequence; the last ``ceil(N * r)`` positions of it are masked.

    Training draws one ratio ``r`` per batch (so every row has the same number of targets and
    shapes stay static) from the truncated normal of :class:`MaskedOrderConfig`. Generation
    follows MaskGIT's cosine schedule: after step ``s`` of ``S`` about ``N (1 - cos(pi/2 (s+1)/S))``
    tokens are known, at least one new token per step.
    """

    Config = MaskedOrderConfig
    attention = "bidirectional"

    def __init__(self, config: MaskedOrderConfig | None = None):
        self.config = config or MaskedOrderConfig()

    def sample_ratio(self, generator: torch.Generator | None = None) -> float:
        """One draw of the masking ratio, by inverting the normal CDF on the truncated range."""
        lo = torch.tensor((self.config.mask_ratio_min - 1.0) / self.config.mask_std, dtype=torch.float64)
        cdf_lo, cdf_hi = torch.special.ndtr(lo), 0.5  # the upper bound is the mean: ndtr(0) = 1/2
        device = generator.device if generator is not None else "cpu"
        u = cdf_lo + (cdf_hi - cdf_lo) * torch.rand((), generator=generator, device=device, dtype=torch.float64).cpu()
        ratio = 1.0 + self.config.mask_std * torch.special.ndtri(u).item()
        return min(max(ratio, self.config.mask_ratio_min), 1.0)

    def plan(self, batch_size, seq_len, generator=None, device="cpu") -> Plan:
        order = random_permutations(batch_size, seq_len, generator, device)
        num_masked = math.ceil(seq_len * self.sample_ratio(generator))
        ranks = order.argsort(dim=-1)  # ranks[b, pos] = step at which pos is generated
        known = ranks < (seq_len - num_masked)
        return Plan(order, known, num_known=seq_len - num_masked)

    def schedule(self, seq_len: int, num_steps: int) -> list[int]:
        # MAR's and EAR's loop exactly: with more steps than tokens some steps write nothing
        # (the masked count is held at >= 1 until the last step); those are left out.
        steps = max(1, num_steps)
        known, unknown = [], seq_len
        for step in range(steps):
            if step == steps - 1:
                masked = 0
            else:
                masked = int(np.floor(seq_len * np.cos(math.pi / 2.0 * (step + 1) / steps)))  # numpy, as MAR
                masked = max(1, min(unknown - 1, masked))  # at least one new token, one left for later
            if seq_len - masked > (known[-1] if known else 0):
                known.append(seq_len - masked)
            unknown = masked
        return known
