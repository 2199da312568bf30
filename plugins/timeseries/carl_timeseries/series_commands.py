"""``carl forecast`` and ``carl backtest`` with a forecaster of any series (a univariate model):
users' tables in long or wide format, quantiles and sample paths written as CSV or Parquet,
fan charts per series beside the statistical baselines, rolling-origin scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carl.errors import CarlError
from carl_timeseries.backtest import Cut, errors_of, rolling_origins
from carl_timeseries.baselines import ENSEMBLE, NAMES, quantile_forecasts
from carl_timeseries.chart import SERIES_PER_PAGE, series_fan_chart
from carl_timeseries.frames import (
    Series,
    read_table,
    series_of,
    stamp_label,
    to_long,
    write_table,
)
from carl_timeseries.metrics import QUANTILES, summary
from carl_timeseries.pipeline import (
    MIN_HISTORY,
    Forecaster,
    forecast_table,
    paths_table,
)
from carl_timeseries.sampling import quantiles_of

TABLE_SUFFIXES = (".csv", ".parquet")
CHART_SUFFIXES = (".png", ".svg", ".pdf")
SEASONS = {"Y": 1, "A": 1, "Q": 4, "M": 12, "W": 52, "D": 7, "B": 5, "h": 24, "H": 24}
HORIZONS = {"Y": 6, "A": 6, "Q": 8, "M": 18, "W": 13, "D": 14, "B": 10, "h": 48, "H": 48}


def season_of(series: Series) -> int:
    """The season length of a series' frequency (quarterly 4, monthly 12, ...; 1 if unknown)."""
    return SEASONS.get(_unit(series.freq), 1)


def default_horizon(series: Series) -> int:
    """M4's / fev-bench's horizon for the frequency (yearly 6, quarterly 8, monthly 18, ...)."""
    return HORIZONS.get(_unit(series.freq), 12)


def _unit(freq: str | None) -> str:
    if not freq:
        return ""
    letters = "".join(c for c in freq.split("-")[0] if c.isalpha())
    return letters[:1] if letters[:1] != "B" or letters == "B" else letters[1:2]


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str, option: str) -> None:
    if path.suffix.lower() not in allowed:
        raise CarlError(f"{option} {path}: {what} are written as {' or '.join(allowed)}")


@dataclass(frozen=True)
class SeriesForecast:
    """What ``carl forecast`` computed and wrote for a table of series."""

    lines: list[str]
    quantiles: Path
    samples: Path
    charts: list[Path]


def run_series_forecast(forecaster: Forecaster, table: Path, *, horizon: int | None, origin: str | None, num_paths: int,
                        out: Path, samples: Path | None, quantiles_path: Path | None, time_column: str | None,
                        baselines: bool, season: int | None, seed: int) -> SeriesForecast:
    """Forecast every series of ``table`` from ``origin`` (default: after its last date)."""
    samples = samples or out.with_suffix(".csv")
    quantiles_path = quantiles_path or out.with_name(out.stem + "-quantiles.csv")
    _check_suffix(out, CHART_SUFFIXES, "fan charts", "--out")
    _check_suffix(samples, TABLE_SUFFIXES, "sample paths", "--samples")
    _check_suffix(quantiles_path, TABLE_SUFFIXES, "quantiles", "--quantiles")
    source = str(table)
    series = series_of(to_long(read_table(table), source, time_column), source)
    pasts, truths = [], []
    for s in series:
        past, truth = _split_at(s, origin, source)
        pasts.append(past)
        truths.append(truth)
    h = horizon or default_horizon(series[0])
    paths = forecaster.sample_series(pasts, h, num_paths, seed)
    quantile_frame = forecast_table(pasts, paths, QUANTILES)
    write_table(quantile_frame, quantiles_path)
    write_table(paths_table(pasts, paths), samples)
    base = {}
    if baselines:
        m = season or season_of(series[0])
        base = quantile_forecasts([p.values for p in pasts], h, m, NAMES)
    lines = [f"forecast of {len(series)} series by {forecaster.name}: {h} steps after "
             + (f"{origin}" if origin else "each series' last date") + f", {num_paths} sample paths"]
    lines += _quantile_lines(quantile_frame, pasts)
    lines += _score_lines(pasts, truths, h, forecaster.name, paths, base, season or season_of(series[0]))
    charts = _charts(pasts, truths, paths, base, out, forecaster.name)
    lines.append(f"wrote {quantiles_path} (mean and quantiles {QUANTILES[0]:g}..{QUANTILES[-1]:g} per series and date)")
    lines.append(f"wrote {samples} ({num_paths} sample paths per series and date)")
    lines.append(f"wrote {', '.join(map(str, charts))} (fan charts" + (f", with {ENSEMBLE}'s median and 80% band)" if base else ")"))
    return SeriesForecast(lines, quantiles_path, samples, charts)


def _split_at(s: Series, origin: str | None, source: str) -> tuple[Series, np.ndarray]:
    """The series before ``origin`` and the observed values from it on."""
    if origin is None:
        index = len(s.values)
    else:
        try:
            when = pd.Timestamp(origin) if isinstance(s.index, pd.DatetimeIndex) else int(origin)
        except ValueError:
            raise CarlError(f"--origin {origin!r} is not a {'date' if isinstance(s.index, pd.DatetimeIndex) else 'step'} "
                            f"of series '{s.uid}'") from None
        index = int(np.searchsorted(s.index.values, np.datetime64(when) if isinstance(when, pd.Timestamp) else when))
        latest = s.future(1)[0]
        if when > latest:
            raise CarlError(f"--origin {origin} is after {s.label(latest)}, the step after the last date of series "
                            f"'{s.uid}': the latest origin possible")
    if index < MIN_HISTORY:
        raise CarlError(f"{source}: series '{s.uid}' has {index} observations before the origin; the forecaster needs at "
                        f"least {MIN_HISTORY}")
    return Series(s.uid, s.index[:index], s.values[:index]), s.values[index:]


def _quantile_lines(frame: pd.DataFrame, series: list[Series], most: int = 6) -> list[str]:
    lines = ["median and 80% interval (0.1 - 0.9):"]
    for s in series[:most]:
        rows = frame[frame["unique_id"] == s.uid]
        cells = [f"{s.label(d)} {m:.4g} [{lo:.4g}, {hi:.4g}]" for d, m, lo, hi in zip(rows["ds"], rows["0.5"], rows["0.1"], rows["0.9"])]
        lines.append(f"  {s.uid}: " + "; ".join(cells[:4]) + ("; ..." if len(cells) > 4 else ""))
    if len(series) > most:
        lines.append(f"  ... and {len(series) - most} more series (all in the quantile table)")
    return lines


def _score_lines(pasts, truths, h, name, paths, base, season) -> list[str]:
    known = [i for i, t in enumerate(truths) if len(t) >= h]
    if not known:
        return ["no series is observed over the whole horizon after the origin: nothing to score"]
    values = [np.r_[pasts[i].values, truths[i]] for i in known]
    cuts = [Cut(k, len(pasts[i].values)) for k, i in enumerate(known)]
    quants = {name: quantiles_of(paths[:, known], QUANTILES), **{n: q[known] for n, q in base.items()}}
    errors = errors_of(values, [pasts[i].uid for i in known], cuts, h, season, quants)
    means = errors.mean()
    lines = [f"scores of {len(known)} series observed over the horizon (means; lower is better):",
             "  " + "  ".join(f"{n:>14}" for n in ["forecaster", "SQL", "WQL", "MASE"])]
    for n in quants:
        lines.append("  " + "  ".join([f"{n:>14}"] + [f"{means[(m, n)]:14.3f}" for m in ("SQL", "WQL", "MASE")]))
    return lines


def _charts(pasts, truths, paths, base, out: Path, name: str) -> list[Path]:
    charts = []
    for page, first in enumerate(range(0, len(pasts), SERIES_PER_PAGE)):
        panels = []
        for b in range(first, min(first + SERIES_PER_PAGE, len(pasts))):
            s = pasts[b]
            panel = {"uid": s.uid, "past_index": s.index, "past": s.values, "future_index": s.future(paths.shape[2]),
                     "paths": paths[:, b], "truth": truths[b][: paths.shape[2]]}
            if ENSEMBLE in base:
                panel["baseline"] = (ENSEMBLE, base[ENSEMBLE][b], QUANTILES)
            panels.append(panel)
        path = out if page == 0 else out.with_name(f"{out.stem}-{page + 1}{out.suffix}")
        series_fan_chart(panels, title=f"{name}: forecasts, {paths.shape[0]} sample paths", path=path)
        charts.append(path)
    return charts


# ---------------------------------------------------------------------------------------------
# carl backtest


def run_backtest(forecaster: Forecaster, table: Path, *, horizon: int | None, windows: int, num_paths: int,
                 time_column: str | None, season: int | None, seed: int, out: Path | None) -> list[str]:
    """Score ``windows`` rolling origins of every series of ``table`` (the last horizons, not
    overlapping) for carl and the statsforecast baselines; lines to print."""
    if windows < 1:
        raise CarlError(f"--windows {windows}: give at least 1")
    source = str(table)
    series = series_of(to_long(read_table(table), source, time_column), source)
    h = horizon or default_horizon(series[0])
    m = season or season_of(series[0])
    need = MIN_HISTORY + windows * h
    short = [s for s in series if len(s.values) < need]
    if short:
        s = short[0]
        raise CarlError(f"{source}: series '{s.uid}' has {len(s.values)} observations; {windows} windows of {h} steps after "
                        f"at least {MIN_HISTORY} of history need {need} (use fewer --windows or a shorter --horizon)")
    cuts = [Cut(i, o) for i, s in enumerate(series) for o in rolling_origins(len(s.values), h, windows)]
    histories = [series[c.series].values[: c.origin] for c in cuts]
    paths = forecaster.sample_histories(histories, h, num_paths, seed)
    quants = {forecaster.name: quantiles_of(paths, QUANTILES), **quantile_forecasts(histories, h, m, NAMES)}
    errors = errors_of([s.values for s in series], [s.uid for s in series], cuts, h, m, quants)
    if out is not None:
        _check_suffix(out, TABLE_SUFFIXES, "scores", "--out")
        flat = errors.copy()
        flat.columns = [f"{metric} {model}" for metric, model in flat.columns]
        write_table(flat.reset_index(), out)
    per_series = errors.groupby(level="unique_id").mean()
    lines = [f"backtest of {forecaster.name} on {len(series)} series: {windows} origin{'s' * (windows > 1)} each "
             f"(the last {windows} x {h} steps), {h} steps ahead, season {m}, {num_paths} sample paths",
             "mean SQL per series (scaled quantile loss over 0.1..0.9; lower is better):",
             "  " + "  ".join(f"{n:>14}" for n in ["series", *quants])]
    for uid, row in per_series["SQL"].iterrows():
        lines.append("  " + "  ".join([f"{str(uid)[:14]:>14}"] + [f"{row[n]:14.3f}" for n in quants]))
    if len(series) > 0:
        overall = summary(per_series.rename_axis("task"))
        lines.append("over the series: geometric mean ratio to SeasonalNaive (SQL, WQL, MASE) and win rate (SQL):")
        for n, v in overall.items():
            lines.append(f"  {n:>14}  " + "  ".join(f"{x:.3f}" for x in v.values()))
    if out is not None:
        lines.append(f"wrote {out} (SQL, WQL and MASE per series and origin)")
    return lines


def origin_label(s: Series, index: int) -> str:
    return stamp_label(s.index[index], s.freq) if index < len(s.index) else s.label(s.future(1)[0])
