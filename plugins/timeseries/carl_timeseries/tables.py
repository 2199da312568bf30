"""``tables``: training windows from your own series (CSV or Parquet files, long or wide), so that
``carl train`` fits a forecaster to them or fine-tunes a pretrained one (``train.init_from``).

Windows are drawn afresh for every batch like the pretraining data's (:mod:`carl_timeseries.pretrain`):
a series, then an end point, then with probability ``short`` a shorter past. ``holdout`` keeps
the last steps of every series out of training (so that ``carl backtest --windows k`` with
``holdout = k x horizon`` scores steps the model never saw); ``synthetic`` mixes in that share
of synthetic windows (KernelSynth, ARIMA, ETS), which keeps a pretrained model general.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import numpy as np
import torch

from carl.data import DataSource
from carl.ranges import check_ranges
from carl_timeseries.frames import read_table, series_of, to_long
from carl_timeseries.pretrain import MixedWindows, check_context
from carl_timeseries.windows import SeriesBank


@dataclass(frozen=True)
class TablesConfig:
    """``paths``: the files (each long ``unique_id, ds, y`` or wide with a date column);
    ``date_column``: a wide table's date column (default ``ds`` or ``date``); the windows:
    ``context`` past and ``horizon`` future steps, ``items`` per epoch, ``short``,
    ``min_context``; ``holdout``: last steps of each series never trained on; ``synthetic``:
    the share of synthetic windows."""

    paths: tuple[str, ...] = ()
    date_column: str | None = None
    context: Annotated[int, at.Ge(1)] = 128
    horizon: Annotated[int, at.Ge(1)] = 24
    items: Annotated[int, at.Ge(1)] = 100_000
    seed: Annotated[int, at.Ge(0)] = 0
    short: Annotated[float, at.Interval(ge=0, le=1)] = 0.3
    min_context: Annotated[int, at.Ge(2)] = 8
    holdout: Annotated[int, at.Ge(0)] = 0
    synthetic: Annotated[float, at.Interval(ge=0, le=1)] = 0.2

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.paths:
            raise ValueError("paths: give the CSV or Parquet files of your series, e.g. data.paths=[sales.csv]")
        if self.min_context > self.context:
            raise ValueError(f"min_context {self.min_context} is longer than context {self.context}")


class SeriesTables(DataSource):
    """Windows of the series in the recipe's files (module doc); ``train`` split only."""

    Config = TablesConfig

    def __init__(self, config: TablesConfig):
        self.config = config

    def series(self) -> list[np.ndarray]:
        """Every series of every file, without its last ``holdout`` steps."""
        out = []
        for path in self.config.paths:
            for s in series_of(to_long(read_table(path), str(path), self.config.date_column), str(path)):
                out.append(s.values[: len(s.values) - self.config.holdout])
        return out

    def dataset(self, split: str = "train") -> MixedWindows:
        if split != "train":
            raise ValueError(f"the tables data has a 'train' split only (score with carl backtest), got {split!r}")
        c = self.config
        bank = SeriesBank(self.series(), length=c.context + c.horizon, context=c.context, min_context=c.min_context)
        if bank.count == 0:
            raise ValueError(f"no series in {', '.join(c.paths)} has the {c.horizon + c.min_context} steps a window needs "
                             f"(horizon {c.horizon} + min_context {c.min_context}) after the holdout of {c.holdout}")
        third = c.synthetic / 3
        return MixedWindows(c, bank, {"real": 1.0 - c.synthetic, "kernel": third, "arima": third, "ets": third})

    def render(self, data: torch.Tensor) -> np.ndarray:
        from carl_timeseries.chart import window_pictures

        return window_pictures(data, self.config.context)

    def check_tokenizer(self, tokenizer) -> None:
        check_context(tokenizer, self.config.context, self.config.context + self.config.horizon)
