"""The benchmark's metrics (utilsforecast, scoringrules) and fev-bench's aggregation.

Per forecast (a series and an origin), from the quantiles 0.1, ..., 0.9 of each step:

- **SQL**, scaled quantile loss: the mean quantile (pinball) loss over the levels and the horizon,
  divided by the mean absolute error of the seasonal naive forecast inside the history
  (utilsforecast's ``scaled_mqloss``; fev-bench's probabilistic metric: a scaled CRPS);
- **WQL**, weighted quantile loss: twice the summed quantile loss over the summed absolute
  values (utilsforecast's ``scaled_crps``, Chronos's metric);
- **MASE** of the median (utilsforecast's ``mase``).

Per task (a table of series), the mean over its forecasts; across tasks, fev-bench's two
summaries: the geometric mean of each model's ratio to the seasonal naive forecast, and the win
rate (the share of (task, other model) pairs where the model's error is lower; ties count half).
The energy score of whole horizons comes from scoringrules (``es_ensemble``, fair estimator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRICS = ("SQL", "WQL", "MASE")
REFERENCE = "SeasonalNaive"


def quantile_columns(model: str, levels: Sequence[float] = QUANTILES) -> list[str]:
    return [f"{model}-q-{q:g}" for q in levels]


def forecast_errors(frame: pd.DataFrame, history: pd.DataFrame, models: Sequence[str], season: int,
                    levels: Sequence[float] = QUANTILES) -> pd.DataFrame:
    """SQL, WQL and MASE of each forecast.

    Args:
        frame: one row per forecast step: ``unique_id``, ``cutoff`` (the last observed ``ds``),
            ``ds``, ``y`` and each model's quantile columns (:func:`quantile_columns`).
        history: ``unique_id, ds, y``: the observed series (only ``ds <= cutoff`` is read).
        models: the models to score.
        season: the season length of the seasonal naive scale (1: the naive forecast).

    Returns:
        One row per ``(unique_id, cutoff)``, a column per ``(metric, model)``.
    """
    from utilsforecast.losses import mase, scaled_crps, scaled_mqloss

    quantiles = np.asarray(levels)
    columns = {m: quantile_columns(m, levels) for m in models}
    median = {m: f"{m}-q-0.5" for m in models}
    keys = ["unique_id", "cutoff"]
    sql = scaled_mqloss(frame, columns, quantiles, season, history).set_index(keys)
    wql = scaled_crps(frame, columns, quantiles).set_index(keys)
    point = mase(frame, list(median.values()), season, history).set_index(keys).rename(columns={v: k for k, v in median.items()})
    return pd.concat({"SQL": sql[list(models)], "WQL": wql[list(models)], "MASE": point[list(models)]}, axis=1)


def task_means(errors: pd.DataFrame, task_of: Mapping[str, str]) -> pd.DataFrame:
    """The mean error of each task: rows are tasks, columns ``(metric, model)``."""
    tasks = errors.index.get_level_values("unique_id").map(task_of)
    return errors.groupby(tasks.rename("task")).mean()


def relative_to_reference(per_task: pd.DataFrame, metric: str, reference: str = REFERENCE) -> pd.DataFrame:
    """Each task's error of ``metric`` divided by the reference model's: rows tasks, columns models."""
    table = per_task[metric]
    return table.div(table[reference], axis=0)


def geometric_mean(ratios: pd.DataFrame) -> pd.Series:
    """fev-bench's summary: the geometric mean over tasks of each model's ratio."""
    return np.exp(np.log(ratios.clip(lower=1e-9)).mean())


def win_rate(per_task: pd.DataFrame, metric: str) -> pd.Series:
    """The share of (task, other model) pairs in which each model's error is lower (ties: half)."""
    table = per_task[metric].to_numpy()  # (tasks, models)
    names = per_task[metric].columns
    better = (table[:, :, None] < table[:, None, :]).astype(float) + 0.5 * (table[:, :, None] == table[:, None, :])
    pairs = better.sum(axis=(0, 2)) - 0.5 * len(table)  # drop each model against itself
    return pd.Series(pairs / (len(table) * (len(names) - 1)), index=names)


def summary(per_task: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{model: {"SQL": gmean ratio, "WQL": ..., "MASE": ..., "win rate (SQL)": ...}}`` over the given tasks."""
    models = list(per_task["SQL"].columns)
    out = {m: {} for m in models}
    for metric in METRICS:
        for m, v in geometric_mean(relative_to_reference(per_task, metric)).items():
            out[m][f"{metric} (gmean ratio to {REFERENCE})"] = float(v)
    for m, v in win_rate(per_task, "SQL").items():
        out[m]["win rate (SQL)"] = float(v)
    return out


def energy_scores(paths: np.ndarray, truth: np.ndarray, scale: np.ndarray) -> float:
    """Mean energy score of whole horizons: ``paths (S, B, H, C)``, ``truth (B, H, C)``, each
    channel divided by ``scale (C,)`` (so that none dominates); the fair estimator of scoringrules."""
    import scoringrules as sr

    fct = np.moveaxis(paths / scale, 0, 1).reshape(paths.shape[1], paths.shape[0], -1)  # (B, S, H * C)
    obs = (truth / scale).reshape(truth.shape[0], -1)
    return float(np.mean(sr.es_ensemble(obs, fct, estimator="fair", backend="numpy")))
