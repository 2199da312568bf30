"""Windows that do not fit the series tokenizer fail before training, and windows with missing
values are dropped with a count instead of making the loss NaN."""

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import carl_timeseries.data as series_data
from carl.config import load_recipe
from carl.errors import RecipeError
from carl.errors import CarlError
from carl.ranges import unbounded_fields
from carl.api import train
from carl_timeseries.data import MacroConfig, MacroSeries, finite_windows
from carl_timeseries.tokenizer import SeriesConfig


@pytest.mark.parametrize("config", [MacroConfig, SeriesConfig])
def test_every_numeric_field_declares_a_range(config):
    assert unbounded_fields(config) == []


def test_an_empty_horizon_fails_at_load():
    with pytest.raises(RecipeError, match=r"^data\.horizon: 0 is out of range; allowed: >= 1$"):
        load_recipe("ts-macro-energy", ["data.horizon=0"])


@pytest.mark.parametrize("overrides, message", [
    (["data.context=20"], r"^data 'macro' gives items of shape \(28, 4\) but tokenizer 'series' takes \(32, 4\)"),
    # the same length, but the tokenizer's 24-step scale would reach 4 steps into the horizon
    (["data.context=20", "data.horizon=12"], r"^data 'macro' does not fit tokenizer 'series': data\.context is 20 but the tokenizer's context is 24"),
])
def test_windows_that_do_not_fit_the_tokenizer_fail_before_training(tmp_path, overrides, message):
    cfg = load_recipe("ts-macro-energy", [*overrides, "train.max_steps=1"])
    with pytest.raises(CarlError, match=message):
        train(cfg, output=tmp_path, progress=False)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.fixture
def one_missing_quarter(monkeypatch):
    series, years = series_data.macro_table()
    series[40, 2] = np.nan  # one missing unemployment figure
    monkeypatch.setattr(series_data, "macro_table", lambda: (series.copy(), years))


def test_windows_with_missing_values_are_dropped_with_a_count(one_missing_quarter, caplog):
    source = MacroSeries(MacroConfig())
    every = source.windows("train")
    with caplog.at_level(logging.WARNING):
        kept = source.dataset("train")[:]["data"]
    assert len(kept) == len(every) - 32  # the 32 windows that hold quarter 40
    assert torch.isfinite(kept).all()
    assert f"dropped 32 of {len(every)} macro train windows with missing or infinite values" in caplog.text


def test_training_on_a_series_with_a_gap_stays_finite(one_missing_quarter, tmp_path):
    out = train(load_recipe("ts-macro-energy", ["train.max_steps=3", "train.checkpoint_every=null"]), output=tmp_path, progress=False)
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())


def test_all_windows_missing_is_an_error():
    with pytest.raises(ValueError, match="every one of the 2 test windows"):
        finite_windows(np.full((2, 4, 1), np.nan), "test")
