"""Training windows cut from many univariate series at once (vectorised: one gather per batch).

A window is ``length`` steps: the past (``context`` steps, left-padded with NaN where the
series starts later) then the ``length - context`` steps to forecast, always observed. Short
histories are part of the training, as forecasting shows them: with probability ``short`` a
window's past is cut to a random length between ``min_context`` and ``context``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class SeriesBank:
    """Univariate series of different lengths, stored right-padded in one ``(S, T_max)`` table."""

    def __init__(self, series: Sequence[np.ndarray], *, length: int, context: int, min_context: int):
        self.length, self.context, self.min_context = length, context, min_context
        horizon = length - context
        kept = [np.asarray(s, np.float32) for s in series if len(s) >= horizon + min_context]
        self.count = len(kept)
        longest = max((len(s) for s in kept), default=0)
        self.table = torch.full((max(self.count, 1), max(longest, 1)), float("nan"))
        for i, s in enumerate(kept):
            self.table[i, : len(s)] = torch.from_numpy(s)
        self.lengths = torch.tensor([len(s) for s in kept] or [0])

    def windows(self, count: int, g: torch.Generator, short: float = 0.0) -> torch.Tensor:
        """``(count, length)`` windows: a series chosen uniformly, then an end uniformly among
        those whose forecast steps and ``min_context`` past steps are observed."""
        horizon = self.length - self.context
        rows = torch.randint(self.count, (count,), generator=g)
        lengths = self.lengths[rows]
        lowest = horizon + self.min_context  # the first end index (exclusive) allowed
        ends = lowest + (torch.rand(count, generator=g) * (lengths - lowest + 1)).long().clamp_max(lengths - lowest)
        index = ends[:, None] - self.length + torch.arange(self.length)  # (count, length)
        out = self.table[rows[:, None], index.clamp_min(0)]
        out = torch.where(index >= 0, out, torch.nan)
        return cut_past(out, self.context, self.min_context, short, g)


def cut_past(windows: torch.Tensor, context: int, min_context: int, share: float, g: torch.Generator) -> torch.Tensor:
    """``windows (B, length)`` with the past of a random ``share`` of them cut to a random length
    in ``[min_context, context]`` (the steps before it set to NaN)."""
    b = windows.shape[0]
    cut = torch.rand(b, generator=g) < share
    keep = min_context + (torch.rand(b, generator=g) * (context - min_context + 1)).long()
    start = torch.where(cut, context - keep, 0)  # the first observed past step
    hidden = torch.arange(windows.shape[1])[None] < start[:, None]
    return torch.where(hidden, torch.nan, windows)
