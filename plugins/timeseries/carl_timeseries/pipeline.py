"""The forecaster's Python face, in the spirit of statsforecast and Chronos pipelines:

    from carl_timeseries import Forecaster

    forecaster = Forecaster.from_pretrained("carl-forecaster")   # a shipped name, a folder or a Hub id
    table = forecaster.predict(df, h=12)                          # df: unique_id, ds, y (or wide)

``predict`` returns one row per series and future date: ``unique_id, ds, mean`` and a column per
quantile level (``"0.1"`` ... ``"0.9"``); ``sample`` returns the sample paths themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carl.errors import CarlError
from carl_timeseries.frames import ID, TARGET, TIME, Series, series_of, to_long
from carl_timeseries.metrics import QUANTILES
from carl_timeseries.sampling import check_forecaster, quantiles_of, sample_paths

DEFAULT = "carl-forecaster"
MIN_HISTORY = 8  # the shortest past the shipped forecaster was trained on
MAX_HORIZON = 1000  # longer horizons roll for minutes; nothing stops a caller of sample_paths


class Forecaster:
    """A carl forecaster of univariate series (multivariate ones channel by channel).

    Args:
        model: a ``ContinuousAR`` with the ``series`` tokenizer on one channel and the causal order.
        name: how tables and charts name it.
        temperature: the scoring rule's sampling temperature (1: as trained).
    """

    def __init__(self, model, name: str = "carl", temperature: float = 1.0):
        try:
            check_forecaster(model)
        except ValueError as exc:
            raise CarlError(f"{name} is not a forecaster of any series: {exc}") from None
        self.model = model.eval()
        self.name = name
        self.temperature = temperature  # the scoring rule's sampling temperature

    @classmethod
    def from_pretrained(cls, reference: str | Path = DEFAULT) -> "Forecaster":
        """Load a forecaster: a shipped name (``carl-forecaster``), a model folder, a training
        checkpoint folder or a Hub repo id."""
        from carl.model import open_model

        loaded = open_model(reference)  # resolves shipped names (register_pretrained) too
        return cls(loaded.model, Path(str(reference)).name)

    @property
    def context(self) -> int:
        """The longest past the model reads (longer histories are cut to their last steps)."""
        return self.model.tokenizer.config.context

    def series(self, df: pd.DataFrame, source: str = "the table", time_column: str | None = None) -> list[Series]:
        """The checked series of a long or wide table (:mod:`carl_timeseries.frames`)."""
        return series_of(to_long(df, source, time_column), source, MIN_HISTORY)

    def sample_series(self, series: Sequence[Series], h: int, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        """Sample paths ``(S, B, h)`` after each series."""
        return self.sample_histories([s.values for s in series], h, num_samples, seed)

    def sample_histories(self, histories: Sequence[np.ndarray], h: int, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        """Sample paths ``(S, B, h)`` after each history (1-D arrays of finite values, oldest first)."""
        if not 1 <= h <= MAX_HORIZON:
            raise CarlError(f"horizon h={h}: give 1 to {MAX_HORIZON} steps")
        if num_samples < 1:
            raise CarlError(f"num_samples={num_samples}: give at least 1")
        return sample_paths(self.model, histories, h, num_samples, torch.Generator().manual_seed(seed), self.temperature)

    def predict(self, df: pd.DataFrame, h: int, quantiles: Sequence[float] = QUANTILES, num_samples: int = 100,
                seed: int = 0) -> pd.DataFrame:
        """Quantile forecasts of the ``h`` steps after each series' last date.

        Args:
            df: long (``unique_id, ds, y``) or wide (a ``ds``/``date`` column, one column per series).
            h: steps to forecast.
            quantiles: levels in (0, 1).
            num_samples: sample paths the quantiles are read from.
            seed: seeds the draws.

        Returns:
            ``unique_id, ds, mean, "<level>"...``: one row per series and future date.

        Raises:
            carl.errors.CarlError: one line for a bad table (missing, infinite or non-numeric
                values, irregular dates, a series shorter than 8 steps) or bad arguments.
        """
        levels = [float(q) for q in quantiles]
        if not all(0 < q < 1 for q in levels):
            raise CarlError(f"quantiles {levels}: each level must lie strictly between 0 and 1")
        series = self.series(df)
        paths = self.sample_series(series, h, num_samples, seed)
        return forecast_table(series, paths, levels)

    def sample(self, df: pd.DataFrame, h: int, num_samples: int = 100, seed: int = 0) -> pd.DataFrame:
        """Sample paths as a long table ``unique_id, sample, ds, y`` (one row per path and date)."""
        series = self.series(df)
        return paths_table(series, self.sample_series(series, h, num_samples, seed))


def forecast_table(series: Sequence[Series], paths: np.ndarray, levels: Sequence[float] = QUANTILES) -> pd.DataFrame:
    """``unique_id, ds, mean, "<level>"...`` from paths ``(S, B, H)``."""
    quants = quantiles_of(paths, levels)  # (B, H, Q)
    h = paths.shape[2]
    frames = []
    for b, s in enumerate(series):
        frame = pd.DataFrame({ID: s.uid, TIME: s.future(h), "mean": paths[:, b].mean(0)})
        for k, q in enumerate(levels):
            frame[f"{q:g}"] = quants[b, :, k]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def paths_table(series: Sequence[Series], paths: np.ndarray) -> pd.DataFrame:
    """``unique_id, sample, ds, y`` from paths ``(S, B, H)``."""
    s_count, _, h = paths.shape
    frames = [pd.DataFrame({ID: s.uid, "sample": np.repeat(np.arange(s_count), h), TIME: np.tile(s.future(h), s_count),
                            TARGET: paths[:, b].reshape(-1)}) for b, s in enumerate(series)]
    return pd.concat(frames, ignore_index=True)
