"""US macroeconomic quarterly series (statsmodels' ``macrodata``, shipped inside its wheel).

Channels (1959Q2-2009Q3, 202 quarters): annualised growth of real GDP and of real consumption
(400 x the quarterly log difference, in %), the unemployment rate (%) and CPI inflation (%).
Split in time: ``train`` windows lie entirely in 1959Q2-1999Q4; ``validation`` windows forecast
from every quarter of 2000Q1 on whose horizon is observed, with the preceding ``context``
quarters (which may reach back into the training years) as the past.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import numpy as np
import torch
from datasets import Array2D, Dataset, Features

from carl.data import DataSource
from carl.ranges import check_ranges
from carl_timeseries.history import History, parse_dates

CHANNELS = ("gdp growth", "consumption growth", "unemployment", "inflation")
UNITS = ("% a year", "% a year", "% of the labour force", "% a year")
FIRST_VALIDATION_YEAR = 2000
logger = logging.getLogger(__name__)


def macro_table() -> tuple[np.ndarray, np.ndarray]:
    """``(202, 4)`` float32 series and the ``(202,)`` year of each quarter."""
    series, _, years = _macro()
    return series, years


def macro_history() -> History:
    """The macro series with their quarters (1959Q2-2009Q3), channel names and units."""
    series, quarters, _ = _macro()
    return History(series, quarters, CHANNELS, UNITS, "macrodata")


def _macro():
    import statsmodels.api as sm

    d = sm.datasets.macrodata.load_pandas().data
    growth = 400 * np.diff(np.log(d[["realgdp", "realcons"]].to_numpy()), axis=0)
    levels = d[["unemp", "infl"]].to_numpy()[1:]
    quarters = parse_dates([f"{int(y)}Q{int(q)}" for y, q in zip(d["year"], d["quarter"])])[1:]
    return np.concatenate([growth, levels], axis=1).astype(np.float32), quarters, d["year"].to_numpy()[1:]


@dataclass(frozen=True)
class MacroConfig:
    """``context`` past quarters and ``horizon`` forecast quarters per window (stride 1)."""

    context: Annotated[int, at.Ge(1)] = 24
    horizon: Annotated[int, at.Ge(1)] = 8

    def __post_init__(self) -> None:
        check_ranges(self)


class MacroSeries(DataSource):
    """Windows ``{"data": (context + horizon, 4)}`` of the macro series; split in time (module doc)."""

    Config = MacroConfig
    channels = CHANNELS
    units = UNITS

    def __init__(self, config: MacroConfig):
        self.config = config

    def windows(self, split: str) -> np.ndarray:
        series, years = macro_table()
        length = self.config.context + self.config.horizon
        first_val = int(np.argmax(years >= FIRST_VALIDATION_YEAR))  # index of 2000Q1
        if split == "train":
            starts = range(0, first_val - length + 1)
        elif split == "validation":  # forecast origins 2000Q1 ... (the horizon must be observed)
            starts = range(first_val - self.config.context, len(series) - length + 1)
        else:
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        return np.stack([series[s : s + length] for s in starts])

    def dataset(self, split: str = "train") -> Dataset:
        windows = finite_windows(self.windows(split), f"macro {split}")
        return Dataset.from_dict({"data": windows}, features=Features({"data": Array2D(windows.shape[1:], "float32")})).with_format("torch")

    def history(self) -> History:
        """The dated series, for ``carl forecast``."""
        return macro_history()

    def render(self, data):
        return None  # a window model's pictures are `carl forecast`'s fan charts

    def to_data_units(self, data: torch.Tensor) -> torch.Tensor:
        """Sampled windows ``(B, length, 4)``, standardised by a past they generated themselves, in
        the channels' units: sample ``i`` takes the past's mean and spread of a training window
        (evenly spaced through 1959-1999), as the tokenizer would have scaled that window."""
        past = self.windows("train")[:, : self.config.context].astype(np.float64)
        pick = np.linspace(0, len(past) - 1, len(data)).round().astype(int)
        mean, std = past.mean(1, keepdims=True)[pick], past.std(1, ddof=1, keepdims=True)[pick]
        return data * torch.from_numpy(std).to(data) + torch.from_numpy(mean).to(data)

    def check_tokenizer(self, tokenizer) -> None:
        """The tokenizer scales each window by its first ``context`` steps: they must be this
        data's past, or the horizon would leak into the scale (lengths are checked by the core)."""
        context = getattr(getattr(tokenizer, "config", None), "context", None)
        if context is not None and context != self.config.context:
            raise ValueError(f"data.context is {self.config.context} but the tokenizer's context is {context} "
                             f"(it normalises each window by its first {context} steps)")


def finite_windows(windows: np.ndarray, what: str) -> np.ndarray:
    """The windows without a missing (NaN) or infinite value, saying how many were dropped: one
    NaN in the past would make the whole window's scale, and with it the batch loss, NaN."""
    keep = np.isfinite(windows).all(axis=(1, 2))
    dropped = int((~keep).sum())
    if dropped:
        logger.warning("carl: dropped %d of %d %s windows with missing or infinite values", dropped, len(windows), what)
    if not keep.any():
        raise ValueError(f"every one of the {len(windows)} {what} windows has missing or infinite values")
    return windows[keep]
