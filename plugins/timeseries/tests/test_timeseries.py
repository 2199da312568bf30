"""The time-series plugin: discovery, data split in time, tokenizer, a short training run and
forecasts that use only the past."""

import numpy as np
import pytest
import torch

from carl.config import load_recipe
from carl.plugins import plugin_infos
from carl.api import train
from carl_timeseries.data import MacroConfig, MacroSeries, macro_table
from carl_timeseries.baselines import last_value, seasonal_naive
from carl_timeseries.forecast import forecast, scores
from carl_timeseries.tokenizer import SeriesConfig, SeriesTokenizer


def test_discovered_through_its_entry_point():
    info = {i.name: i for i in plugin_infos()}["timeseries"]
    assert info.error is None and info.provides == {"tokenizers": ["series"], "datasets": ["macro", "pretrain", "tables"], "recipes": ["timeseries"],
                                                     "pretrained": ["carl-forecaster"]}


def test_split_in_time():
    series, years = macro_table()
    assert series.shape == (202, 4) and years[0] == 1959 and years[-1] == 2009
    source = MacroSeries(MacroConfig())
    train_w, val_w = source.windows("train"), source.windows("validation")
    first_val = int(np.argmax(years >= 2000))
    assert train_w.shape == (first_val - 31, 32, 4) and np.array_equal(train_w[-1], series[first_val - 32 : first_val])
    assert np.array_equal(val_w[0, 24:], series[first_val : first_val + 8])  # horizons start in 2000Q1
    assert len(val_w) == 202 - first_val - 8 + 1


def test_tokenizer_round_trip_and_past_only_scale():
    tok = SeriesTokenizer(SeriesConfig())
    x = torch.randn(3, 32, 4) * 5 + 2
    tokens = tok.encode(x)
    assert tokens.shape == (3, 8, 16)
    xn, mean, std = tok.normalize(x)
    torch.testing.assert_close(tok.denormalize(tok.decode(tokens), mean, std), x)
    future_changed = x.clone()
    future_changed[:, 24:] += 100.0
    torch.testing.assert_close(tok.encode(future_changed)[:, :6], tokens[:, :6])  # the future does not move the scale


def test_observed_shares_mark_the_padding_a_short_history_would_otherwise_hide():
    """A history of 10 steps left-padded to the 24-step context: its padded steps standardise to
    0, exactly like steps at the past's mean, so without ``observed`` the padded patches read as a
    flat past; with it each token says how much of its patch is real."""
    config = dict(length=32, channels=1, patch=4, context=24)
    short = torch.full((1, 32, 1), float("nan"))
    short[0, 14:, 0] = torch.arange(18.0) ** 1.5
    flat = short.clone()
    flat[0, :14, 0] = short[0, 14:24, 0].mean()  # the padding filled with the past's mean
    plain = SeriesTokenizer(SeriesConfig(**config))
    assert plain.token_dim == 4
    torch.testing.assert_close(plain.encode(short)[:, :3], plain.encode(flat)[:, :3])  # indistinguishable
    tok = SeriesTokenizer(SeriesConfig(**config, observed=True))
    assert tok.token_dim == 5
    tokens = tok.encode(short)
    assert tokens[0, :, -1].tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]  # steps 14.. observed
    assert tok.encode(flat)[0, :, -1].tolist() == [1.0] * 8
    torch.testing.assert_close(tokens[..., :4], plain.encode(short))  # the values are unchanged
    torch.testing.assert_close(tok.decode(tokens), plain.decode(plain.encode(short)))


def test_observed_shares_per_channel_and_the_round_trip():
    tok = SeriesTokenizer(SeriesConfig(observed=True))  # 4 channels, patches of 4
    x = torch.randn(2, 32, 4) * 3 + 1
    x[1, :6, 2] = float("nan")  # channel 2 of the second window starts 6 steps late
    tokens = tok.encode(x)
    assert tokens.shape == (2, 8, 20)
    shares = tokens[..., 16:]
    assert shares[0].eq(1).all() and shares[1, :, [0, 1, 3]].eq(1).all()
    assert shares[1, :, 2].tolist() == [0.0, 0.5] + [1.0] * 6
    xn, mean, std = tok.normalize(x)
    torch.testing.assert_close(tok.decode(tokens), xn)


def test_baselines_and_scores():
    w = torch.arange(32.0).view(1, 32, 1).expand(1, 32, 2).contiguous()
    assert last_value(w, 24)[0, 0, :, 0].tolist() == [23.0] * 8
    assert seasonal_naive(w, 24)[0, 0, :, 0].tolist() == [20.0, 21.0, 22.0, 23.0] * 2
    truth = w[:, 24:]
    exact = scores(truth[None], truth, torch.ones(2))
    assert exact["energy_score"] == 0 and (exact["crps"] == 0).all()
    assert scores(last_value(w, 24), truth, torch.ones(2))["crps"].tolist() == pytest.approx([4.5, 4.5])


def test_recipe_trains_and_forecasts_from_the_past(tmp_path):
    cfg = load_recipe("ts-macro-energy", ["train.epochs=3", "train.checkpoint_every=null"])
    out = train(cfg, output=tmp_path, progress=False)
    from carl.model import load_model

    model, recipe = load_model(out)
    windows = torch.from_numpy(MacroSeries(recipe.data.options).windows("validation")[:4])
    paths = forecast(model, windows, num_samples=5, generator=torch.Generator().manual_seed(0))
    assert paths.shape == (5, 4, 8, 4) and torch.isfinite(paths).all()
    leaked = windows.clone()
    leaked[:, 24:] = 1e6  # changing the future must not change the forecast
    again = forecast(model, leaked, num_samples=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(paths, again)
