"""``carl forecast``: sample paths from a trained model at a chosen origin, scored against the
truth where it is known, next to the baselines, written as a table of paths and a fan chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carl.errors import CarlError
from carl_timeseries.baselines import BASELINES
from carl_timeseries.chart import fan_chart
from carl_timeseries.forecast import Compared, compare
from carl_timeseries.frames import write_table
from carl_timeseries.history import ForecastWindow, History, forecast_window, read_history
from carl_timeseries.tokenizer import SeriesTokenizer

CHART_SUFFIXES = (".png", ".svg", ".pdf")
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class ForecastReport:
    """What ``carl forecast`` computed and wrote."""

    history: History
    window: ForecastWindow
    results: dict[str, Compared]
    samples: Path
    chart: Path

    def lines(self, run: str) -> list[str]:
        h, w = self.history, self.window
        num_paths = len(self.results["carl"].paths)
        lines = [f"forecast of {run} from {h.label(w.future_dates[0])}: {len(w.future_dates)} steps to "
                 f"{h.label(w.future_dates[-1])}, from the {w.context} before ({h.label(w.past_dates[0])}-"
                 f"{h.label(w.past_dates[-1])}) of {h.source}; {num_paths} sample paths"]
        if w.known:
            lines.append(f"scores against the truth of {w.known} of {len(w.future_dates)} steps, lower is better (energy "
                         f"score: channels in units of their spread before the origin; CRPS: the channel's units):")
            lines += score_table(self.results, h.channels)
        else:
            lines.append(f"no truth after {h.label(h.dates[-1])}: nothing to score")
        lines.append(f"wrote {self.samples} ({num_paths} sample paths x {len(w.future_dates)} dates)")
        lines.append(f"wrote {self.chart} (fan chart)")
        return lines


def score_table(results: dict[str, Compared], channels: tuple[str, ...]) -> list[str]:
    """An aligned text table: one row per forecaster, the energy score then the CRPS per channel."""
    header = ["forecast", "energy score", *(f"CRPS {c}" for c in channels)]
    rows = [[name, f"{r.scores['energy_score']:.3f}", *(f"{v:.3f}" for v in r.scores["crps"].tolist())]
            for name, r in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [fmt(header), *(fmt(row) for row in rows)]


def run_forecast(run: str, *, origin: str | None, num_paths: int, out: Path, samples: Path | None = None,
                 csv: Path | None = None, date_column: str = "date", baselines: bool = True, seed: int = 0) -> ForecastReport:
    """Forecast with the model folder ``run`` from ``origin`` and write the paths and the fan chart.

    Args:
        run: a model folder (a training output) or a Hub repo id of a time-series model.
        origin: the first step forecast (``2004Q1``, ``2004-01-01``); None: the step after the last date.
        num_paths: sample paths to draw.
        out: the fan chart (``.png``, ``.svg`` or ``.pdf``).
        samples: the sample paths as a table (``.csv`` or ``.parquet``); default: ``out`` as ``.csv``.
        csv: a CSV of the user's own series (a date column and the model's channels); default:
            the history of the model's own data source.
        date_column: the date column of ``csv``.
        baselines: also forecast with and score statsforecast's baselines (SeasonalNaive, AutoARIMA, AutoETS,
            AutoTheta and their ensemble).
        seed: seeds the sampler and the baselines' simulations.

    Raises:
        CarlError: in one line for a model that is not a time-series model, bad files, columns,
            origins or suffixes.
    """
    from carl.model import load_model

    samples = samples or out.with_suffix(".csv")
    if out.suffix.lower() not in CHART_SUFFIXES:
        raise CarlError(f"--out {out}: the fan chart is written as {', '.join(CHART_SUFFIXES)}")
    if samples.suffix.lower() not in TABLE_SUFFIXES:
        raise CarlError(f"--samples {samples}: the sample paths are written as {' or '.join(TABLE_SUFFIXES)}")
    model, recipe = load_model(run)
    if not isinstance(model.tokenizer, SeriesTokenizer):
        raise CarlError(f"{run} is not a time-series model (tokenizer '{recipe.model.tokenizer.name}'); "
                        f"carl forecast needs the 'series' tokenizer")
    tok = model.tokenizer.config
    history = _history(recipe, tok.channels, csv, date_column)
    window = forecast_window(history, origin, tok.context, tok.length - tok.context)
    before = history.values[history.dates <= window.past_dates[-1]]
    scale = torch.from_numpy(np.nanstd(before, axis=0)).clamp_min(1e-6)
    results = compare(model, torch.from_numpy(window.window), num_paths, scale=scale, known=window.known,
                      baselines=tuple(BASELINES) if baselines else (), seed=seed)
    paths = results["carl"].paths[:, 0].numpy()  # (S, H, C)
    write_paths(paths, window.future_dates, history, samples)
    context = window.window[0, : tok.context]
    truth = window.window[0, tok.context : tok.context + window.known]
    fan_chart(window.past_dates, context, window.future_dates, paths, channels=history.channels, units=history.units,
              truth=truth, path=out, title=f"{Path(str(run)).name}: forecast from {history.label(window.future_dates[0])}, "
                                           f"{num_paths} sample paths")
    return ForecastReport(history, window, results, samples, out)


def write_paths(paths: np.ndarray, dates: pd.DatetimeIndex, history: History, path: Path) -> Path:
    """Sample paths ``(S, H, C)`` as a long table: ``path, date, <channel>...`` (one row per path and date)."""
    frame = pd.DataFrame(paths.reshape(-1, paths.shape[-1]), columns=list(history.channels))
    frame.insert(0, "date", [history.label(d) for d in dates] * len(paths))
    frame.insert(0, "path", np.repeat(np.arange(len(paths)), len(dates)))
    return write_table(frame, path)


def _history(recipe, channels: int, csv: Path | None, date_column: str) -> History:
    source = recipe.data.build("datasets")
    names = getattr(source, "channels", None)
    names = tuple(names) if names is not None and len(names) == channels else None
    units = tuple(getattr(source, "units", ())) if names else None
    if csv is not None:
        history = read_history(csv, names, date_column, units)
        if len(history.channels) != channels:
            raise CarlError(f"{csv}: {len(history.channels)} series columns ({', '.join(history.channels)}), "
                            f"the model forecasts {channels}")
        return history
    if not hasattr(source, "history"):
        raise CarlError(f"the model's data source '{recipe.data.name}' has no dated history: pass --csv FILE "
                        f"(a date column and {channels} series columns)")
    return source.history()
