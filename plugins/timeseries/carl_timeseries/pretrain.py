"""``pretrain``: the data of the pretrained forecaster, univariate windows drawn afresh for every
batch from a mixture of synthetic generators and real series.

Sources (relative weights in the recipe): KernelSynth Gaussian processes, ARIMA paths, ETS paths
(:mod:`carl_timeseries.synthetic`), windows of the *training parts* of the benchmark's real series
(never an evaluated step: :meth:`carl_timeseries.tasks.Task.training_part`) and TSMixup
combinations of such windows. Items are ``{"data": (context + horizon, 1)}`` with NaN where a
window's past is shorter than ``context`` (the tokenizer standardises by the observed past).

The dataset is map-style with ``__getitems__``: the DataLoader hands it the whole batch of
indices, and the batch is generated at once, seeded by those indices, so a resumed run draws the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types as at
import numpy as np
import torch

from carl.data import DataSource
from carl.ranges import check_ranges
from carl_timeseries.synthetic import arima_paths, ets_paths, kernel_synth, tsmixup
from carl_timeseries.windows import SeriesBank, cut_past

SOURCES = ("kernel", "arima", "ets", "real", "mixup")


@dataclass(frozen=True)
class PretrainConfig:
    """Windows of ``context`` past steps and ``horizon`` steps to forecast; ``items`` windows per
    epoch (each drawn afresh); the share of each source (normalised weights); ``short``: the share
    of windows whose past is cut to a random length >= ``min_context``; ``real_series``: which
    real series the ``real`` and ``mixup`` sources read."""

    context: Annotated[int, at.Ge(1)] = 128
    horizon: Annotated[int, at.Ge(1)] = 24
    items: Annotated[int, at.Ge(1)] = 1_000_000
    seed: Annotated[int, at.Ge(0)] = 0
    kernel: Annotated[float, at.Ge(0)] = 1.0
    arima: Annotated[float, at.Ge(0)] = 1.0
    ets: Annotated[float, at.Ge(0)] = 1.0
    real: Annotated[float, at.Ge(0)] = 1.0
    mixup: Annotated[float, at.Ge(0)] = 0.5
    short: Annotated[float, at.Interval(ge=0, le=1)] = 0.3
    min_context: Annotated[int, at.Ge(2)] = 8
    real_series: Literal["benchmark", "none"] = "benchmark"

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.min_context > self.context:
            raise ValueError(f"min_context {self.min_context} is longer than context {self.context}")
        if not sum(getattr(self, s) for s in SOURCES if not (s in ("real", "mixup") and self.real_series == "none")) > 0:
            raise ValueError(f"give at least one source a positive weight ({', '.join(SOURCES)})")


class MixedWindows(torch.utils.data.Dataset):
    """``config.items`` windows generated a batch at a time (module doc); ``weights``: the share
    of each of :data:`SOURCES` (the real ones need a non-empty ``bank``)."""

    def __init__(self, config, bank: SeriesBank | None, weights: dict[str, float]):
        self.config, self.bank = config, bank
        shares = torch.tensor([float(weights.get(s, 0.0)) for s in SOURCES], dtype=torch.float64)
        if bank is None or bank.count == 0:
            shares[SOURCES.index("real")] = shares[SOURCES.index("mixup")] = 0.0
        if not shares.sum() > 0:
            raise ValueError("no source of windows: the real series are too short for the windows and no synthetic share is set")
        self.weights = shares / shares.sum()

    def __len__(self) -> int:
        return self.config.items

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        g = torch.Generator().manual_seed(hash((self.config.seed, *indices)) % 2**62)
        data = self.batch(len(indices), g)
        return [{"data": row[:, None]} for row in data]

    def batch(self, count: int, g: torch.Generator) -> torch.Tensor:
        """``(count, context + horizon)`` windows from the sources in their shares."""
        c = self.config
        length = c.context + c.horizon
        counts = torch.bincount(torch.multinomial(self.weights, count, replacement=True, generator=g), minlength=len(SOURCES))
        parts = []
        for source, n in zip(SOURCES, counts.tolist()):
            if n == 0:
                continue
            if source == "real":
                parts.append(self.bank.windows(n, g, c.short))
                continue
            if source == "mixup":
                full = self.bank.windows(n * 3, g)
                full = full[~torch.isnan(full).any(1)][:n]  # mixtures of fully observed windows only
                x = tsmixup(full, g) if len(full) else kernel_synth(n, length, g)
                x = torch.cat([x, kernel_synth(n - len(x), length, g)]) if len(x) < n else x
            else:
                x = {"kernel": kernel_synth, "arima": arima_paths, "ets": ets_paths}[source](n, length, g)
            parts.append(cut_past(x, c.context, c.min_context, c.short, g))
        data = torch.cat(parts)
        return data[torch.randperm(count, generator=g)]


class PretrainWindows(DataSource):
    """The pretrained forecaster's training data (module doc); ``train`` split only."""

    Config = PretrainConfig

    def __init__(self, config: PretrainConfig):
        self.config = config

    def dataset(self, split: str = "train") -> MixedWindows:
        if split != "train":
            raise ValueError(f"the pretrain data has a 'train' split only (the benchmark evaluates), got {split!r}")
        return MixedWindows(self.config, self.bank(), {s: getattr(self.config, s) for s in SOURCES})

    def bank(self) -> SeriesBank | None:
        c = self.config
        if c.real_series == "none":
            return None
        from carl_timeseries.tasks import benchmark_tasks

        parts = {}
        for task in benchmark_tasks():
            parts[task.name] = task.training_part()
        return SeriesBank(list(parts.values()), length=c.context + c.horizon, context=c.context, min_context=c.min_context)

    def render(self, data: torch.Tensor) -> np.ndarray:
        from carl_timeseries.chart import window_pictures

        return window_pictures(data, self.config.context)

    def check_tokenizer(self, tokenizer) -> None:
        check_context(tokenizer, self.config.context, self.config.context + self.config.horizon)


def check_context(tokenizer, context: int, length: int) -> None:
    """A series tokenizer must standardise by exactly this data's past, over windows of its length."""
    tok = getattr(tokenizer, "config", None)
    if getattr(tok, "context", context) != context:
        raise ValueError(f"data.context is {context} but the tokenizer's context is {tok.context} "
                         f"(it standardises each window by its first {tok.context} steps)")
    if getattr(tok, "channels", 1) != 1:
        raise ValueError(f"the windows are univariate but the tokenizer reads {tok.channels} channels")
