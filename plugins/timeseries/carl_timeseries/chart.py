"""The fan chart of a forecast (matplotlib): per channel, the past, the quantile bands of the
sample paths, their median and, where known, the truth, on a date axis with units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from carl.charts import figure, save

BANDS = ((5, 95, 0.18), (25, 75, 0.38))  # (low, high percentile, opacity): the 90% and 50% bands


def fan_chart(past_dates: pd.DatetimeIndex, past: np.ndarray, future_dates: pd.DatetimeIndex, paths: np.ndarray, *,
              channels: tuple[str, ...], units: tuple[str, ...], truth: np.ndarray | None = None, title: str = "",
              path: str | Path | None = None):
    """Draw (and save, if ``path`` is given) the fan chart of one forecast; returns the Figure.

    Args:
        past_dates, past: the ``T`` observed steps ``(T, C)`` before the forecast.
        future_dates, paths: the ``H`` forecast steps and the sample paths ``(S, H, C)``.
        channels, units: a name and a unit per channel (the panel title and y-axis label).
        truth: ``(K, C)`` observed values of the first ``K <= H`` forecast steps, or None.
        title: the figure's title.
        path: where to write the chart (PNG, SVG or PDF by suffix); parent folders are created.
    """
    num = len(channels)
    cols = min(num, 2)
    rows = math.ceil(num / cols)
    fig, axes = figure(6.0 * cols, 3.2 * rows, dpi=110, nrows=rows, ncols=cols, squeeze=False, sharex=True)
    # The fan starts at the last observation, so the bands join the past line.
    fan_dates = past_dates[-1:].append(future_dates)
    for c, ax in enumerate(axes.flat):
        if c >= num:
            ax.set_visible(False)
            continue
        start = np.repeat(past[-1:, c][None], len(paths), axis=0)  # (S, 1)
        fan = np.concatenate([start, paths[..., c]], axis=1)  # (S, 1 + H)
        for low, high, alpha in BANDS:
            ax.fill_between(fan_dates, np.percentile(fan, low, axis=0), np.percentile(fan, high, axis=0),
                            color="tab:blue", alpha=alpha, lw=0, label=f"{high - low}% band")
        ax.plot(fan_dates, np.median(fan, axis=0), color="tab:blue", lw=1.8, label="median forecast")
        ax.plot(past_dates, past[:, c], color="black", lw=1.5, label="observed")
        if truth is not None and len(truth):
            ax.plot(fan_dates[: len(truth) + 1], np.r_[past[-1, c], truth[:, c]], color="tab:red", lw=1.5,
                    marker="o", ms=3, label="truth")
        ax.axvline(future_dates[0], color="0.5", lw=0.8, ls=":")
        ax.set_title(channels[c], fontsize=10)
        ax.set_ylabel(units[c] if units[c] else channels[c])
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("date")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if path is not None:
        save(fig, path)
    return fig
