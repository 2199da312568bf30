"""The benchmark's metrics on cases computed by hand: the scaled and weighted quantile losses,
MASE, the energy score, fev-bench's geometric mean and win rate."""

import numpy as np
import pandas as pd
import pytest

from carl_timeseries.backtest import Cut, errors_of, rolling_origins
from carl_timeseries.metrics import energy_scores, geometric_mean, relative_to_reference, summary, task_means, win_rate


def pinball(y, q, level):
    return np.maximum(level * (y - q), (level - 1) * (y - q))


def test_quantile_losses_and_mase_equal_the_hand_computed_values():
    series = [np.array([1.0, 3.0, 2.0, 4.0, 3.0, 5.0, 6.0, 4.0])]  # forecast the last 2 from the first 6
    levels = (0.25, 0.5, 0.75)
    model = np.array([[[4.0, 5.0, 6.0], [4.0, 4.5, 5.0]]])  # (B, H, Q)
    errors = errors_of(series, ["s"], [Cut(0, 6)], 2, 2, {"m": model, "SeasonalNaive": np.full((1, 2, 3), 3.0)}, levels)
    y = np.array([6.0, 4.0])
    loss = np.mean([pinball(y, model[0, :, k], lv) for k, lv in enumerate(levels)])  # mean over levels and steps
    scale = np.mean(np.abs(series[0][2:6] - series[0][:4]))  # in-sample seasonal naive (season 2) MAE
    assert scale == 1.0
    assert errors.loc[("s", 5), ("SQL", "m")] == pytest.approx(loss / scale)
    wql = 2 * np.sum([pinball(y, model[0, :, k], lv).sum() for k, lv in enumerate(levels)]) / len(levels) / np.abs(y).sum()
    assert errors.loc[("s", 5), ("WQL", "m")] == pytest.approx(wql)
    assert errors.loc[("s", 5), ("MASE", "m")] == pytest.approx(np.mean(np.abs(y - [5.0, 4.5])) / scale)
    assert errors.loc[("s", 5), ("MASE", "SeasonalNaive")] == pytest.approx(np.mean(np.abs(y - 3.0)) / scale)


def test_scales_read_only_the_history_before_each_origin():
    values = np.r_[np.zeros(6) + np.arange(6) % 2, 100.0, -100.0, 0.0, 0.0]  # wild values after the first origin
    quants = {"m": np.zeros((2, 2, 1)), "SeasonalNaive": np.zeros((2, 2, 1))}
    errors = errors_of([values], ["s"], [Cut(0, 6), Cut(0, 8)], 2, 1, quants, (0.5,))
    assert errors.loc[("s", 5), ("MASE", "m")] == pytest.approx(np.mean([100.0, 100.0]) / 1.0)  # scale: |diff| of 0,1,0,1,0,1
    assert errors.loc[("s", 7), ("MASE", "m")] == pytest.approx(0.0)


def test_energy_score_equals_its_formula_with_unequal_channel_scales():
    rng = np.random.default_rng(0)
    paths = rng.normal(size=(5, 2, 3, 2))  # (S, B, H, C)
    truth = rng.normal(size=(2, 3, 2))
    scale = np.array([1.0, 4.0])
    expected = []
    for b in range(2):
        x = (paths[:, b] / scale).reshape(5, -1)
        y = (truth[b] / scale).reshape(-1)
        first = np.mean([np.linalg.norm(xi - y) for xi in x])
        second = np.sum([np.linalg.norm(xi - xj) for xi in x for xj in x]) / (5 * 4)  # fair: i != j
        expected.append(first - 0.5 * second)
    assert energy_scores(paths, truth, scale) == pytest.approx(np.mean(expected))
    assert energy_scores(paths, truth, scale) != pytest.approx(energy_scores(paths, truth, np.ones(2)))


def test_geometric_mean_and_win_rate_of_fev_bench():
    columns = pd.MultiIndex.from_product([["SQL"], ["a", "b", "SeasonalNaive"]])
    per_task = pd.DataFrame([[1.0, 4.0, 2.0], [2.0, 1.0, 2.0], [3.0, 3.0, 3.0]], index=["t1", "t2", "t3"], columns=columns)
    ratios = relative_to_reference(per_task, "SQL")
    assert geometric_mean(ratios)["a"] == pytest.approx((0.5 * 1.0 * 1.0) ** (1 / 3))
    assert geometric_mean(ratios)["b"] == pytest.approx((2.0 * 0.5 * 1.0) ** (1 / 3))
    # a beats b on t1, loses on t2, ties on t3; beats the reference on t1, ties t2 and t3
    assert win_rate(per_task, "SQL")["a"] == pytest.approx((1 + 0 + 0.5 + 1 + 0.5 + 0.5) / 6)


def test_task_means_average_the_series_of_a_table_before_the_ratio():
    index = pd.MultiIndex.from_tuples([("x/1", 3), ("x/2", 3), ("y", 3)], names=["unique_id", "cutoff"])
    cols = pd.MultiIndex.from_product([["SQL", "WQL", "MASE"], ["m", "SeasonalNaive"]])
    errors = pd.DataFrame([[1.0, 2.0] * 3, [3.0, 2.0] * 3, [1.0, 1.0] * 3], index=index, columns=cols)
    means = task_means(errors, {"x/1": "x", "x/2": "x", "y": "y"})
    assert means.loc["x", ("SQL", "m")] == 2.0 and means.loc["y", ("SQL", "m")] == 1.0
    assert summary(means)["m"]["SQL (gmean ratio to SeasonalNaive)"] == pytest.approx(1.0)


def test_rolling_origins_are_the_last_non_overlapping_horizons():
    assert rolling_origins(100, 8, 3) == [76, 84, 92]
    assert rolling_origins(100, 8, 2, step=1) == [91, 92]
