"""The forecasting benchmark's tasks: which series, which forecast origins, which horizon, and
which part of each series training may read.

Every real series of :mod:`carl_timeseries.fpp` plus the four macrodata series. Horizons are
M4's and fev-bench's per frequency (yearly 6, quarterly 8, monthly 18, weekly 13, daily 14).
Rolling origins lie in the last part of each series: the last ``windows`` non-overlapping
horizons (stride = horizon), the truth of each fully observed. macrodata keeps its own
protocol (every quarter from 2000Q1 to 2007Q4 is an origin, 8 quarters ahead: 32 overlapping
windows per series). A series' *training part* is everything before its first origin; a series
that covers macrodata's evaluated years (``uschange``: US consumption, income and production
growth, the same economy) is cut before 2000 as well, so that no evaluated quarter is ever
trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from carl_timeseries.data import CHANNELS, FIRST_VALIDATION_YEAR, macro_history
from carl_timeseries.fpp import SEASON, real_series

HORIZON = {"yearly": 6, "quarterly": 8, "monthly": 18, "weekly": 13, "daily": 14}
WINDOWS = {"yearly": 2, "quarterly": 2, "monthly": 3, "weekly": 5, "daily": 5}
FREQUENCIES = tuple(HORIZON)
MACRO_ORIGINS = 32  # 2000Q1 ... 2007Q4
MACRO_CUTOFF = pd.Timestamp(FIRST_VALIDATION_YEAR, 1, 1)
EMBARGO = {"uschange": MACRO_CUTOFF}  # tables covering macrodata's evaluated years: trained on before 2000 only


@dataclass(frozen=True)
class Task:
    """One series of the benchmark and its forecast origins (indices of the first forecast step)."""

    task: str  # the table; the aggregation's unit (fev-bench's task)
    name: str
    frequency: str
    dates: pd.DatetimeIndex
    values: np.ndarray  # (T,) float64
    origins: tuple[int, ...]
    horizon: int

    @property
    def season(self) -> int:
        return SEASON[self.frequency]

    def training_part(self) -> np.ndarray:
        """The values training may read: before the first origin (and before an embargo date)."""
        end = self.origins[0]
        if self.task in EMBARGO:
            end = min(end, int(np.searchsorted(self.dates.values, EMBARGO[self.task].to_datetime64())))
        return self.values[:end]


@lru_cache(maxsize=1)
def benchmark_tasks() -> tuple[Task, ...]:
    """macrodata's four series, then every real series (module doc)."""
    tasks = list(macro_tasks())
    for s in real_series():
        h, w = HORIZON[s.frequency], WINDOWS[s.frequency]
        n = len(s.values)
        origins = tuple(n - k * h for k in range(w, 0, -1))
        tasks.append(Task(s.task, s.name, s.frequency, s.dates, s.values, origins, h))
    return tuple(tasks)


def macro_tasks() -> tuple[Task, ...]:
    history = macro_history()
    first = int((history.dates < MACRO_CUTOFF).sum())  # index of 2000Q1
    origins = tuple(range(first, first + MACRO_ORIGINS))
    return tuple(Task("macro", f"macro/{name}", "quarterly", history.dates, history.values[:, c].astype(np.float64),
                      origins, HORIZON["quarterly"]) for c, name in enumerate(CHANNELS))
