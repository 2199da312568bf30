"""What a forecast means, pinned down without training: each window keeps its own statistics,
the energy score is measured in the units ``scale`` gives, and the forecast window's edges (the
latest origin, the default origin, a horizon step observed in only some channels)."""

import numpy as np
import pandas as pd
import pytest
import torch
from carl_timeseries.forecast import forecast, scores
from carl_timeseries.history import History, forecast_window
from carl_timeseries.tokenizer import SeriesConfig, SeriesTokenizer

from carl.errors import CarlError
from carl.scores import energy_score


class FlatFuture:
    """A stand-in for a trained model: it continues every prompt with tokens of value ``level``
    (in the tokenizer's standardised units), so a path is its own window's ``mean + level * std``."""

    def __init__(self, level: float):
        self.tokenizer = SeriesTokenizer(SeriesConfig())
        self.level = level

    def generate(self, *, batch_size, prompt, generator, return_tokens):
        tok = self.tokenizer
        rest = torch.full((batch_size, tok.num_tokens - prompt.shape[1], tok.token_dim), self.level)
        return torch.cat([prompt, rest], dim=1)


def test_each_window_is_forecast_with_its_own_statistics():
    tok = FlatFuture(1.0).tokenizer
    context, channels = tok.config.context, tok.config.channels
    gen = torch.Generator().manual_seed(0)
    # three windows at very different levels and spreads: any mix-up between them shows
    windows = torch.randn(3, tok.config.length, channels, generator=gen) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    windows += torch.tensor([0.0, 1e3, -1e4])[:, None, None]
    paths = forecast(FlatFuture(1.0), windows, num_samples=4)  # (S, B, H, C)
    past = windows[:, :context]
    expected = past.mean(1) + past.std(1).clamp_min(tok.config.min_std)  # (B, C): mean + 1 std of its own past
    assert paths.shape == (4, 3, tok.config.length - context, channels)
    torch.testing.assert_close(paths, expected[None, :, None, :].expand_as(paths))


def test_the_energy_score_is_measured_in_the_units_scale_gives():
    gen = torch.Generator().manual_seed(0)
    samples, truth = torch.randn(6, 2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    scale = torch.tensor([1.0, 10.0, 0.5])
    by_hand = energy_score((samples / scale).flatten(2), (truth / scale).flatten(1), alpha=1.0).mean()
    torch.testing.assert_close(scores(samples, truth, scale)["energy_score"], by_hand)
    # a channel given in other units, with its scale in the same units: the same score
    units = torch.tensor([1.0, 1000.0, 1.0])
    torch.testing.assert_close(scores(samples * units, truth * units, scale * units)["energy_score"], by_hand)
    assert not torch.isclose(scores(samples, truth, torch.ones(3))["energy_score"], by_hand)
    # the CRPS stays per channel in the original units, whatever the scale
    torch.testing.assert_close(scores(samples, truth, scale)["crps"], scores(samples, truth, torch.ones(3))["crps"])


def quarterly(rows: int, channels: int = 2) -> History:
    dates = pd.date_range("2000-01-01", periods=rows, freq="QS")
    values = np.arange(rows * channels, dtype=np.float32).reshape(rows, channels)
    return History(values, dates, tuple("abcdef"[:channels]), ("",) * channels, "q.csv")


def test_the_latest_origin_is_the_step_after_the_last_date():
    h = quarterly(10)  # 2000Q1 .. 2002Q2
    latest = forecast_window(h, "2002Q3", 4, 3)
    assert latest.known == 0 and h.label(latest.future_dates[0]) == "2002Q3"
    np.testing.assert_array_equal(latest.window[0, :4], h.values[-4:])
    assert np.isnan(latest.window[0, 4:]).all()
    with pytest.raises(CarlError, match="2002Q3, the step after the last date of q.csv: the latest origin possible"):
        forecast_window(h, "2002Q4", 4, 3)


def test_without_an_origin_the_forecast_starts_after_the_last_date():
    h = quarterly(10)
    default = forecast_window(h, None, 4, 3)
    latest = forecast_window(h, "2002Q3", 4, 3)
    np.testing.assert_array_equal(default.window, latest.window)
    assert list(default.future_dates) == list(latest.future_dates) and default.known == 0
    assert default.past_dates[-1] == h.dates[-1]


def test_a_step_observed_in_only_some_channels_is_not_known():
    h = quarterly(10, channels=3)
    values = h.values.copy()
    values[8, 1] = np.nan  # 2002Q1: two of three channels observed
    partial = History(values, h.dates, h.channels, h.units, h.source)
    w = forecast_window(partial, "2001Q3", 4, 4)  # horizon 2001Q3 .. 2002Q2; 2002Q1 is its third step
    assert w.known == 2
    np.testing.assert_array_equal(w.window[0, 4:6], h.values[6:8])
    assert forecast_window(h, "2001Q3", 4, 4).known == 4  # every channel observed: the whole horizon is known
