"""Rolling-origin evaluation: forecasts of carl and of the baselines from several origins of
each series, scored against what followed (the benchmark and ``carl backtest`` share it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from carl_timeseries.baselines import NAMES, quantile_forecasts
from carl_timeseries.metrics import QUANTILES, forecast_errors, quantile_columns
from carl_timeseries.sampling import quantiles_of, sample_paths


@dataclass(frozen=True)
class Cut:
    """One forecast: series ``series`` (an index into the series list) from step ``origin`` on."""

    series: int
    origin: int


def rolling_origins(length: int, horizon: int, windows: int, step: int | None = None) -> list[int]:
    """The last ``windows`` origins of a series of ``length`` steps whose ``horizon`` is observed,
    ``step`` apart (default: the horizon, so the evaluated steps do not overlap), oldest first."""
    step = step or horizon
    return [length - horizon - k * step for k in range(windows - 1, -1, -1)]


def histories_at(series: Sequence[np.ndarray], cuts: Sequence[Cut]) -> list[np.ndarray]:
    return [np.asarray(series[c.series][: c.origin]) for c in cuts]


def carl_quantiles(model, series: Sequence[np.ndarray], cuts: Sequence[Cut], horizon: int, num_samples: int,
                   seed: int = 0, levels: Sequence[float] = QUANTILES) -> tuple[np.ndarray, np.ndarray]:
    """carl's quantiles ``(B, H, Q)`` and sample paths ``(S, B, H)`` for each cut."""
    paths = sample_paths(model, histories_at(series, cuts), horizon, num_samples, torch.Generator().manual_seed(seed))
    return quantiles_of(paths, levels), paths


def baseline_quantiles(series: Sequence[np.ndarray], cuts: Sequence[Cut], horizon: int, season: int,
                       names: Sequence[str] = NAMES, n_jobs: int = 1) -> dict[str, np.ndarray]:
    return quantile_forecasts(histories_at(series, cuts), horizon, season, names, n_jobs=n_jobs)


def errors_of(series: Sequence[np.ndarray], ids: Sequence[str], cuts: Sequence[Cut], horizon: int, season: int,
              quantiles: dict[str, np.ndarray], levels: Sequence[float] = QUANTILES) -> pd.DataFrame:
    """SQL, WQL and MASE (:func:`carl_timeseries.metrics.forecast_errors`) of each model's
    quantiles ``(B, H, Q)`` for each cut; rows ``(unique_id, cutoff)``."""
    rows = []
    for b, cut in enumerate(cuts):
        truth = np.asarray(series[cut.series][cut.origin : cut.origin + horizon], np.float64)
        if len(truth) < horizon:
            raise ValueError(f"{ids[cut.series]}: the origin {cut.origin} leaves {len(truth)} observed steps, not {horizon}")
        row = {"unique_id": ids[cut.series], "cutoff": cut.origin - 1, "ds": np.arange(cut.origin, cut.origin + horizon),
               "y": truth}
        for name, q in quantiles.items():
            row.update(dict(zip(quantile_columns(name, levels), q[b].T)))
        rows.append(pd.DataFrame(row))
    frame = pd.concat(rows, ignore_index=True)
    used = sorted({c.series for c in cuts})
    history = pd.concat([pd.DataFrame({"unique_id": ids[i], "ds": np.arange(len(series[i])),
                                       "y": np.asarray(series[i], np.float64)}) for i in used], ignore_index=True)
    return forecast_errors(frame, history, list(quantiles), season, levels).sort_index()
