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


def window_pictures(data, context: int, size_px: int = 160) -> np.ndarray:
    """Windows ``(B, length, C)`` in standardised units (what ``carl sample`` draws from a model
    of windows: each is scaled by its own past, so it has no units) as uint8 pictures
    ``(B, H, W, 3)``: the past in black, the steps after it in blue, one line per channel."""
    from carl.charts import figure, pixels

    dpi = 100
    fig, ax = figure(size_px / dpi, size_px / dpi, dpi=dpi)
    fig.subplots_adjust(0.04, 0.04, 0.96, 0.96)
    windows = data.float().numpy()
    pictures = []
    steps = np.arange(windows.shape[1])
    for window in windows:
        ax.clear()
        ax.set(xticks=[], yticks=[])
        ax.axvline(context - 0.5, color="0.6", lw=0.8, ls=":")
        ax.plot(steps[:context], window[:context], color="black", lw=0.9)
        ax.plot(steps[context - 1 :], window[context - 1 :], color="tab:blue", lw=1.1)
        pictures.append(pixels(fig))
    return np.stack(pictures)


SERIES_PER_PAGE = 12


def series_fan_chart(panels: list[dict], *, title: str = "", path: str | Path | None = None, past_steps: int = 60):
    """A fan chart per series in one figure (a grid of panels); returns the Figure.

    Each panel is a dict: ``uid``; ``past_index``, ``past`` (the observed steps before the
    forecast, of which the last ``past_steps`` are drawn); ``future_index`` and ``paths (S, H)``;
    optionally ``truth`` (observed values of the first forecast steps) and ``baseline``:
    ``(name, quantiles (H, Q), levels)``, drawn as its median and 10-90% band.
    """
    num = len(panels)
    cols = min(num, 3)
    rows = math.ceil(num / cols)
    fig, axes = figure(5.2 * cols, 3.0 * rows, dpi=100, nrows=rows, ncols=cols, squeeze=False)
    for ax in axes.flat[num:]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels):
        past_index, past = p["past_index"][-past_steps:], np.asarray(p["past"])[-past_steps:]
        fan_index = past_index[-1:].append(pd.Index(p["future_index"]))
        start = np.full((len(p["paths"]), 1), past[-1])
        fan = np.concatenate([start, p["paths"]], axis=1)
        for low, high, alpha in BANDS:
            ax.fill_between(fan_index, np.percentile(fan, low, axis=0), np.percentile(fan, high, axis=0), color="tab:blue",
                            alpha=alpha, lw=0, label=f"carl {high - low}% band")
        ax.plot(fan_index, np.median(fan, axis=0), color="tab:blue", lw=1.6, label="carl median")
        if p.get("baseline") is not None:
            name, quants, levels = p["baseline"]
            levels = list(levels)
            lo, mid, hi = (np.r_[past[-1], quants[:, levels.index(q)]] for q in (0.1, 0.5, 0.9))
            ax.plot(fan_index, mid, color="tab:orange", lw=1.3, ls="--", label=f"{name} median")
            ax.fill_between(fan_index, lo, hi, color="tab:orange", alpha=0.12, lw=0, label=f"{name} 80% band")
        ax.plot(past_index, past, color="black", lw=1.2, label="observed")
        truth = p.get("truth")
        if truth is not None and len(truth):
            ax.plot(fan_index[: len(truth) + 1], np.r_[past[-1], truth], color="tab:red", lw=1.2, marker="o", ms=2.5,
                    label="truth")
        ax.axvline(fan_index[1], color="0.5", lw=0.8, ls=":")
        ax.set_title(str(p["uid"]), fontsize=10)
        ax.grid(alpha=0.3)
        if isinstance(past_index, pd.DatetimeIndex):
            fig.autofmt_xdate(rotation=25)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08 if rows == 1 else 0.04, 1, 1))
    if path is not None:
        save(fig, path)
    return fig
