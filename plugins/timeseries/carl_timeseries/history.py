"""Dated multivariate series: the macro table or a user's CSV, and the window a forecast reads.

A forecast *from* an origin predicts the origin and the ``horizon - 1`` steps after it from the
``context`` steps before it (the validation windows of ``macro`` use the same convention: the
origin 2000Q1 is the first quarter forecast).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import re

import numpy as np
import pandas as pd

from carl.errors import CarlError

QUARTER = re.compile(r"^\d{4}Q[1-4]$")  # 2004Q1


@dataclass(frozen=True)
class History:
    """``values (T, C)`` float32 observed at ``dates`` (T evenly spaced timestamps with a ``freq``)."""

    values: np.ndarray
    dates: pd.DatetimeIndex
    channels: tuple[str, ...]
    units: tuple[str, ...]
    source: str  # where the series come from, for messages and titles

    @property
    def step(self) -> pd.DateOffset:
        return self.dates.freq

    def future(self, count: int) -> pd.DatetimeIndex:
        """The ``count`` dates after the last one."""
        return pd.date_range(self.dates[-1], periods=count + 1, freq=self.step)[1:]

    def label(self, date: pd.Timestamp) -> str:
        """``2004Q1`` for quarterly series, ``2004-01`` for monthly ones, the ISO date otherwise."""
        name = self.step.freqstr
        if name.startswith(("Q", "BQ")):
            return str(pd.Period(date, freq="Q"))
        if name.startswith(("M", "BM")):
            return str(pd.Period(date, freq="M"))
        return date.date().isoformat() if date == date.normalize() else date.isoformat()


@dataclass(frozen=True)
class ForecastWindow:
    """The ``(1, context + horizon, C)`` window of one forecast: the past, then the truth where it
    is known (NaN after the last observation), with the dates of both parts."""

    window: np.ndarray
    past_dates: pd.DatetimeIndex
    future_dates: pd.DatetimeIndex
    known: int  # leading horizon steps whose truth is fully observed

    @property
    def context(self) -> int:
        return len(self.past_dates)


def read_history(path: str | Path, channels: tuple[str, ...] | None, date_column: str = "date",
                 units: tuple[str, ...] | None = None) -> History:
    """A CSV with a date column and one column per channel (any order; other columns are refused).

    Args:
        path: the CSV file.
        channels: the model's channel names, or None to take the CSV's other columns in order.
        date_column: the column holding the dates (anything pandas parses: ``2004-01-01``, ``2004Q1``).
        units: the units of ``channels``, for charts.

    Raises:
        CarlError: in one line, for a missing file, a missing date column, missing or unexpected
            channel columns, unparsable or unevenly spaced dates, non-numeric or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise CarlError(f"{path}: no such file")
    frame = pd.read_csv(path)
    if date_column not in frame.columns:
        raise CarlError(f"{path}: no date column '{date_column}' (columns: {', '.join(map(str, frame.columns))}); "
                        f"name it with --date-column")
    columns = [c for c in frame.columns if c != date_column]
    if channels is not None:
        missing = [c for c in channels if c not in columns]
        extra = [c for c in columns if c not in channels]
        if missing or extra:
            found = f"missing {', '.join(map(repr, missing))}" if missing else ""
            found += ("; " if missing and extra else "") + (f"unexpected {', '.join(map(repr, extra))}" if extra else "")
            raise CarlError(f"{path}: the model forecasts the columns {', '.join(map(repr, channels))}: {found}")
        columns = list(channels)
    try:
        dates = parse_dates(frame[date_column].astype(str).tolist())
    except (ValueError, TypeError) as exc:
        raise CarlError(f"{path}: column '{date_column}' holds values that are not dates ({exc})") from None
    if dates is None:
        raise CarlError(f"{path}: the dates in '{date_column}' must be evenly spaced and increasing (at least 3 rows)")
    try:
        exact = frame[columns].apply(pd.to_numeric).to_numpy(np.float64)
    except ValueError as exc:
        raise CarlError(f"{path}: a channel column holds a value that is not a number ({exc})") from None
    infinite = np.argwhere(np.isinf(exact) | (np.abs(exact) > np.finfo(np.float32).max))  # 1e308 overflows the model's float32
    if len(infinite):
        row, col = infinite[0]
        raise CarlError(f"{path}: '{columns[col]}' is infinite at {frame[date_column].iloc[row]} (or beyond float32's "
                        f"range, +-3.4e38): give finite values, or leave the cell empty for a missing one")
    values = exact.astype(np.float32)
    return History(values, dates, tuple(columns), tuple(units or ("",) * len(columns)), str(path))


def parse_dates(texts: list[str]) -> pd.DatetimeIndex | None:
    """Dates (``2004Q1`` quarters or anything pandas parses) with their step inferred; None if they
    are not evenly spaced and increasing."""
    if all(QUARTER.match(t) for t in texts):
        dates = pd.PeriodIndex(texts, freq="Q").to_timestamp()
    else:
        dates = pd.DatetimeIndex(pd.to_datetime(texts, format="mixed"))
    if len(dates) < 3 or not dates.is_monotonic_increasing:
        return None
    inferred = pd.DatetimeIndex(dates, freq="infer")
    return inferred if inferred.freq is not None else None


def parse_date(text: str) -> pd.Timestamp:
    """One date: ``2004Q1`` (the quarter's first day) or anything pandas parses."""
    return pd.Period(text, freq="Q").to_timestamp() if QUARTER.match(text) else pd.Timestamp(text)


def write_history(history: History, path: str | Path, date_column: str = "date") -> Path:
    """The series as a CSV that :func:`read_history` reads back."""
    frame = pd.DataFrame(history.values, columns=list(history.channels))
    frame.insert(0, date_column, [history.label(d) for d in history.dates])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def forecast_window(history: History, origin: str | None, context: int, horizon: int) -> ForecastWindow:
    """The window whose first forecast step is ``origin`` (default: the step after the last date).

    Raises:
        CarlError: in one line if the origin is not a date, lies beyond the step after the last
            observation, has fewer than ``context`` steps before it, or a past value is missing.
    """
    dates, next_date = history.dates, history.future(1)[0]
    if origin is None:
        index = len(dates)
    else:
        try:
            when = parse_date(origin)
        except ValueError:
            raise CarlError(f"--origin {origin!r} is not a date (e.g. 2004Q1 or 2004-01-01)") from None
        if when > next_date:
            raise CarlError(f"--origin {origin} is after {history.label(next_date)}, the step after the last date of "
                            f"{history.source}: the latest origin possible")
        index = int(np.searchsorted(dates.values, when.to_datetime64()))  # the first date on or after it
    if index < context:
        have = f"{index} step{'s' * (index != 1)}"
        raise CarlError(f"{history.source}: {have} of history before {history.label(_date_at(history, index))}, "
                        f"the model reads {context}; choose a later --origin or give a longer history")
    past = history.values[index - context : index]
    gaps = np.argwhere(np.isnan(past))
    if len(gaps):
        row, col = gaps[0]
        raise CarlError(f"{history.source}: '{history.channels[col]}' has no value at "
                        f"{history.label(dates[index - context + row])}, inside the {context} steps the forecast reads")
    truth = np.full((horizon, len(history.channels)), np.nan, np.float32)
    observed = history.values[index : index + horizon]
    truth[: len(observed)] = observed
    known = int(np.argmax(np.isnan(truth).any(1))) if np.isnan(truth).any() else horizon
    future = pd.DatetimeIndex([_date_at(history, i) for i in range(index, index + horizon)])
    return ForecastWindow(np.concatenate([past, truth])[None], dates[index - context : index], future, known)


def _date_at(history: History, index: int) -> pd.Timestamp:
    if index < len(history.dates):
        return history.dates[index]
    return history.future(index - len(history.dates) + 1)[-1]
