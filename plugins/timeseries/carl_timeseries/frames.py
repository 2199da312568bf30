"""Users' series as tables: statsforecast's and Chronos's long format (``unique_id, ds, y``, one
row per series and date) or the wide format (a date column, one column per series), from a
DataFrame, a CSV or a Parquet file. Every problem is one line naming the series and the date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carl.errors import CarlError

ID, TIME, TARGET = "unique_id", "ds", "y"
TIME_COLUMNS = ("ds", "date", "timestamp", "time")  # a wide table's date column, by name
QUARTER = re.compile(r"^\s*\d{4}\s*-?\s*Q[1-4]\s*$", re.IGNORECASE)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class SeriesDataError(CarlError, ValueError):
    """A table of series that cannot be forecast as it is (one line: the series, the date, the fix)."""


@dataclass(frozen=True)
class Series:
    """One series: ``values (T,)`` float64 at ``index`` (a DatetimeIndex with a frequency, or integer steps)."""

    uid: str
    index: pd.Index
    values: np.ndarray

    @property
    def freq(self) -> str | None:
        return getattr(self.index, "freqstr", None)

    def future(self, count: int) -> pd.Index:
        """The ``count`` time stamps after the last one."""
        if isinstance(self.index, pd.DatetimeIndex):
            return pd.date_range(self.index[-1], periods=count + 1, freq=self.index.freq)[1:]
        step = self.index[1] - self.index[0] if len(self.index) > 1 else 1
        return pd.Index(self.index[-1] + step * np.arange(1, count + 1))

    def label(self, stamp) -> str:
        return stamp_label(stamp, self.freq)


def stamp_label(stamp, freq: str | None) -> str:
    """``2004Q1`` for quarterly stamps, ``2004-01`` for monthly ones, the ISO date otherwise."""
    if not isinstance(stamp, pd.Timestamp):
        return str(stamp)
    if freq and freq.startswith(("Q", "BQ")):
        return str(pd.Period(stamp, freq="Q"))
    if freq and freq.startswith(("M", "BM")):
        return str(pd.Period(stamp, freq="M"))
    return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (one line for a missing or unreadable file)."""
    path = Path(path)
    if not path.is_file():
        raise SeriesDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".gz"):
            return pd.read_csv(path)
    except Exception as exc:  # a damaged file: say which
        raise SeriesDataError(f"{path}: cannot read it as {suffix[1:]}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    raise SeriesDataError(f"{path}: series are read from .csv or .parquet files, not {suffix or 'a file without suffix'}")


def to_long(frame: pd.DataFrame, source: str = "the table", time_column: str | None = None) -> pd.DataFrame:
    """The table in long format ``unique_id, ds, y``: as it is when it has those columns (extra
    columns are refused), else read as wide (a date column, then one column per series)."""
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    if {ID, TIME, TARGET} <= set(columns):
        extra = [c for c in columns if c not in (ID, TIME, TARGET)]
        if extra:
            raise SeriesDataError(f"{source}: a long table has the columns unique_id, ds, y only; remove {', '.join(map(repr, extra))}")
        return frame[[ID, TIME, TARGET]]
    time_column = time_column or next((c for c in TIME_COLUMNS if c in columns), None)
    if time_column is None or time_column not in columns:
        raise SeriesDataError(f"{source}: no date column (columns: {', '.join(columns)}); give either the long format "
                              f"unique_id, ds, y or a wide table with a column named {' or '.join(TIME_COLUMNS)} "
                              f"(or --date-column) and one column per series")
    series = [c for c in columns if c != time_column]
    if not series:
        raise SeriesDataError(f"{source}: the date column '{time_column}' is its only column: no series to forecast")
    long = frame.melt(id_vars=[time_column], value_vars=series, var_name=ID, value_name=TARGET)
    return long.rename(columns={time_column: TIME})[[ID, TIME, TARGET]]


def series_of(long: pd.DataFrame, source: str = "the table", min_length: int = 1) -> list[Series]:
    """Check a long table and split it into series (in order of first appearance).

    Raises:
        SeriesDataError: in one line, for a value that is not a number, a missing value, an
            infinite value (or one beyond float32's range), unparsable, repeated, unsorted or
            irregular dates, or a series shorter than ``min_length``.
    """
    if long.empty:
        raise SeriesDataError(f"{source}: no rows")
    out = []
    for uid, rows in long.groupby(ID, sort=False):
        uid = str(uid)
        index = _time_index(rows[TIME], source, uid)
        values = _numbers(rows[TARGET], index, source, uid)
        order = np.argsort(index.values, kind="stable")
        index, values = index[order], values[order]
        index = _regular(index, source, uid)
        if len(values) < min_length:
            raise SeriesDataError(f"{source}: series '{uid}' has {len(values)} observation{'s' * (len(values) != 1)}; "
                                  f"at least {min_length} are needed")
        out.append(Series(uid, index, values))
    return out


def _time_index(column: pd.Series, source: str, uid: str) -> pd.Index:
    if pd.api.types.is_integer_dtype(column):
        return pd.Index(column.to_numpy())
    texts = column.astype(str)
    try:
        if texts.map(lambda t: bool(QUARTER.match(t))).all():
            return pd.PeriodIndex(texts.str.replace(r"\s|-", "", regex=True).str.upper(), freq="Q").to_timestamp()
        return pd.DatetimeIndex(pd.to_datetime(column, format="mixed"))
    except (ValueError, TypeError) as exc:
        raise SeriesDataError(f"{source}: series '{uid}': the ds column holds a value that is not a date ({exc})") from None


def _numbers(column: pd.Series, index: pd.Index, source: str, uid: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    text = column.astype(str).str.strip()
    bad = np.isnan(values) & column.notna().to_numpy() & (text != "").to_numpy() & ~text.str.lower().isin(["nan", "na"]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise SeriesDataError(f"{source}: series '{uid}' holds {column.iloc[i]!r} at {stamp_label(index[i], None)}: "
                              f"not a number")
    if np.isnan(values).any():
        i = int(np.argmax(np.isnan(values)))
        raise SeriesDataError(f"{source}: series '{uid}' has no value at {stamp_label(index[i], None)}: fill the "
                              f"missing value (or drop that date and the ones before it)")
    big = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)  # models read float32: 1e308 would become inf
    if big.any():
        i = int(np.argmax(big))
        raise SeriesDataError(f"{source}: series '{uid}' is infinite at {stamp_label(index[i], None)} (or beyond "
                              f"float32's range, +-3.4e38): give finite values")
    return values


def _regular(index: pd.Index, source: str, uid: str) -> pd.Index:
    if index.has_duplicates:
        raise SeriesDataError(f"{source}: series '{uid}' has the date {stamp_label(index[index.duplicated()][0], None)} twice")
    if len(index) < 3:
        return index
    if not isinstance(index, pd.DatetimeIndex):
        steps = np.diff(index.to_numpy())
        if (steps != steps[0]).any():
            i = int(np.argmax(steps != steps[0]))
            raise SeriesDataError(f"{source}: series '{uid}' is not evenly spaced: step {steps[i]} after {index[i]}, "
                                  f"{steps[0]} before")
        return index
    freq = pd.infer_freq(index)
    if freq is None:
        guess = next((f for k in range(len(index) - 2) if (f := pd.infer_freq(index[k : k + 3])) is not None), None)
        if guess is None:
            where = f"{stamp_label(index[0], None)}, {stamp_label(index[1], None)}, {stamp_label(index[2], None)}"
        else:  # the first date off the regular calendar the others follow
            k = next(k for k in range(len(index) - 2) if pd.infer_freq(index[k : k + 3]) == guess)
            regular = pd.date_range(index[k], periods=len(index) - k, freq=guess)
            off = k + int(np.argmax(index[k:] != regular))
            where = f"{stamp_label(index[off - 1], None)} is followed by {stamp_label(index[off], None)}"
        raise SeriesDataError(f"{source}: series '{uid}' is not evenly spaced: {where}; give one value per step of a "
                              f"regular frequency (daily, weekly, monthly, ...)")
    return pd.DatetimeIndex(index, freq=freq)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as Parquet (a ``.parquet`` suffix) or CSV, folders made; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, float_format="%.6g")
    return path
