"""The forecasts a carl forecaster must beat, from statsforecast, fitted per series and origin.

- **SeasonalNaive**: the last season repeated (the reference every score is divided by);
- **AutoARIMA**, **AutoETS**, **AutoTheta**: the automatic model searches of R's ``forecast``
  package as statsforecast implements them (AICc orders, ETS forms, Theta variants);
- **StatEnsemble**: their combination, the strongest statistical baseline of fev-bench and
  Chronos: the mean of the three models' quantiles, and for sample paths an equal mixture of
  their simulated paths.

Quantiles come from the models' own prediction intervals (0.1 and 0.9 are the 80% interval's
ends, 0.5 the point forecast); sample paths from their simulation (``StatsForecast.simulate``),
which keeps the dependence between horizon steps that the energy score judges. A model that
fails on a series falls back to the seasonal naive forecast (statsforecast's ``fallback_model``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from carl_timeseries.metrics import QUANTILES

STAT_MODELS = ("AutoARIMA", "AutoETS", "AutoTheta")
ENSEMBLE = "StatEnsemble"
NAMES = ("SeasonalNaive", *STAT_MODELS, ENSEMBLE)


def _models(season: int, names: Sequence[str]):
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

    make = {"SeasonalNaive": lambda: SeasonalNaive(season_length=season), "AutoARIMA": lambda: AutoARIMA(season_length=season),
            "AutoETS": lambda: AutoETS(season_length=season), "AutoTheta": lambda: AutoTheta(season_length=season)}
    return [make[n]() for n in names]


def _members(names: Sequence[str]) -> list[str]:
    """The statsforecast models to fit for ``names`` (the ensemble needs its three members)."""
    wanted = [n for n in names if n != ENSEMBLE]
    if ENSEMBLE in names:
        wanted += [m for m in STAT_MODELS if m not in wanted]
    return [n for n in NAMES if n in wanted]


def history_frame(histories: Sequence[np.ndarray]) -> pd.DataFrame:
    """statsforecast's long frame: ``unique_id`` = the history's index, integer ``ds``, ``y``."""
    return pd.DataFrame({
        "unique_id": np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]),
        "ds": np.concatenate([np.arange(len(h)) for h in histories]),
        "y": np.concatenate([np.asarray(h, np.float64) for h in histories]),
    })


def _engine(season: int, names: Sequence[str], n_jobs: int):
    from statsforecast import StatsForecast
    from statsforecast.models import SeasonalNaive

    return StatsForecast(models=_models(season, _members(names)), freq=1, n_jobs=n_jobs,
                         fallback_model=SeasonalNaive(season_length=season))


def quantile_forecasts(histories: Sequence[np.ndarray], horizon: int, season: int, names: Sequence[str] = NAMES,
                       levels: Sequence[float] = QUANTILES, n_jobs: int = 1) -> dict[str, np.ndarray]:
    """``{model: (B, horizon, Q)}`` quantiles after each of the ``B`` histories."""
    intervals = sorted({round(abs(200 * q - 100)) for q in levels if q != 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of short series; the fallback copes
        frame = _engine(season, names, n_jobs).forecast(df=history_frame(histories), h=horizon, level=intervals)
    frame = frame.sort_values(["unique_id", "ds"])
    out = {}
    for name in _members(names):
        cols = [name if q == 0.5 else f"{name}-{'lo' if q < 0.5 else 'hi'}-{round(abs(200 * q - 100))}" for q in levels]
        out[name] = frame[cols].to_numpy().reshape(len(histories), horizon, len(levels))
    if ENSEMBLE in names:
        out[ENSEMBLE] = np.mean([out[m] for m in STAT_MODELS], axis=0)
    return {n: np.sort(out[n], axis=-1) for n in names}  # intervals never cross, but fallbacks may tie


def simulate_paths(histories: Sequence[np.ndarray], horizon: int, season: int, num_paths: int, seed: int = 0,
                   names: Sequence[str] = NAMES, n_jobs: int = 1) -> dict[str, np.ndarray]:
    """``{model: (num_paths, B, horizon)}`` simulated sample paths after each history; the
    ensemble's path ``s`` is member ``s mod 3``'s path ``s`` (an equal mixture)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = _engine(season, names, n_jobs).simulate(h=horizon, df=history_frame(histories), n_paths=num_paths, seed=seed)
    frame = frame.sort_values(["unique_id", "sample_id", "ds"])
    out = {}
    for name in _members(names):
        values = frame[name].to_numpy().reshape(len(histories), num_paths, horizon)
        out[name] = np.moveaxis(values, 1, 0)
    if ENSEMBLE in names:
        pick = np.arange(num_paths) % len(STAT_MODELS)
        stacked = np.stack([out[m] for m in STAT_MODELS])  # (3, S, B, H)
        out[ENSEMBLE] = stacked[pick, np.arange(num_paths)]
    return {n: out[n] for n in names}


# ---------------------------------------------------------------------------------------------
# For `carl forecast` on a window model: windows (B, context + horizon, C) -> paths (S, B, H, C)


def last_value(windows: torch.Tensor, context: int) -> torch.Tensor:
    """The last observed value repeated over the horizon: ``(1, B, H, C)``."""
    horizon = windows.shape[1] - context
    return windows[:, context - 1 : context].expand(-1, horizon, -1)[None]


def seasonal_naive(windows: torch.Tensor, context: int, season: int = 4) -> torch.Tensor:
    """The last observed season repeated over the horizon: ``(1, B, H, C)``."""
    horizon = windows.shape[1] - context
    last_season = windows[:, context - season : context]
    return last_season.repeat(1, -(-horizon // season), 1)[:, :horizon][None]


def window_paths(name: str, season: int = 4) -> Callable[..., torch.Tensor]:
    """A baseline of :data:`NAMES` as ``f(windows, context, num_paths, seed) -> (S, B, H, C)``,
    fitted to each window's first ``context`` steps, channel by channel."""

    def run(windows: torch.Tensor, context: int, num_paths: int, seed: int = 0) -> torch.Tensor:
        b, _, c = windows.shape
        past = windows[:, :context].double().numpy()
        histories = [past[i, :, j] for i in range(b) for j in range(c)]
        paths = simulate_paths(histories, windows.shape[1] - context, season, num_paths, seed, names=(name,))[name]
        return torch.from_numpy(paths.reshape(num_paths, b, c, -1).transpose(0, 1, 3, 2).copy()).float()

    return run


BASELINES: dict[str, Callable[..., torch.Tensor]] = {name: window_paths(name) for name in NAMES}
