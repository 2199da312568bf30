"""`carl forecast` and `carl backtest` with a forecaster of any series, users' tables (long, wide,
CSV, Parquet) with one-line errors, and `carl train` on those tables."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from carl.config import load_recipe
from carl.plugins import register_commands
from carl.api import train

TINY = ["model.backbone.width=32", "model.backbone.depth=1", "model.backbone.heads=2", "model.score.width=32",
        "train.max_steps=2", "train.global_batch=16", "train.warmup_steps=1", "train.checkpoint_every=null",
        "train.tracker=none", "data.items=64"]


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    cfg = load_recipe("ts-forecaster", [*TINY, "data.real_series=none"])
    return train(cfg, output=tmp_path_factory.mktemp("fc"), progress=False)


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    app.command("noop")(lambda: None)
    register_commands(app)
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def monthly(n=60, ids=("north", "south")):
    dates = pd.date_range("2015-01-01", periods=n, freq="MS")
    t = np.arange(n)
    return pd.DataFrame([{"unique_id": uid, "ds": d, "y": 100 + 10 * k + 5 * np.sin(2 * np.pi * i / 12) + 0.3 * i}
                         for k, uid in enumerate(ids) for i, d in zip(t, dates)])


def test_forecast_writes_quantiles_paths_and_fan_charts(forecaster, cli, tmp_path):
    monthly().to_csv(tmp_path / "long.csv", index=False)
    result = cli("forecast", forecaster, "--csv", tmp_path / "long.csv", "--paths", 16, "-h", 5, "--out", tmp_path / "fan.png",
                 "--samples", tmp_path / "paths.parquet", "--no-baselines")
    assert result.exit_code == 0, result.output
    assert "forecast of 2 series" in result.output and "north: 2020-01" in result.output
    quantiles = pd.read_csv(tmp_path / "fan-quantiles.csv")
    assert list(quantiles.columns) == ["unique_id", "ds", "mean", *[f"0.{k}" for k in range(1, 10)]]
    assert len(quantiles) == 10 and quantiles["ds"].iloc[0] == "2020-01-01"
    assert (np.diff(quantiles[[f"0.{k}" for k in range(1, 10)]].to_numpy(), axis=1) >= 0).all()
    paths = pd.read_parquet(tmp_path / "paths.parquet")
    assert len(paths) == 2 * 16 * 5 and set(paths.columns) == {"unique_id", "sample", "ds", "y"}
    from PIL import Image

    assert Image.open(tmp_path / "fan.png").size[0] > 600


def test_forecast_from_an_origin_scores_carl_beside_the_baselines(forecaster, cli, tmp_path):
    frame = monthly().pivot(index="ds", columns="unique_id", values="y").reset_index().rename(columns={"ds": "date"})
    frame.to_csv(tmp_path / "wide.csv", index=False)
    result = cli("forecast", forecaster, "--csv", tmp_path / "wide.csv", "--paths", 16, "-h", 6, "--origin", "2019-01-01",
                 "--out", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    assert "scores of 2 series observed over the horizon" in result.output
    for name in ("SeasonalNaive", "AutoARIMA", "StatEnsemble"):
        assert any(line.strip().startswith(name) for line in result.output.splitlines()), name


def test_backtest_scores_rolling_origins(forecaster, cli, tmp_path):
    monthly().to_csv(tmp_path / "long.csv", index=False)
    result = cli("backtest", forecaster, "--csv", tmp_path / "long.csv", "-h", 4, "--windows", 2, "--paths", 8,
                 "--out", tmp_path / "scores.csv")
    assert result.exit_code == 0, result.output
    assert "2 origins each (the last 2 x 4 steps)" in result.output and "geometric mean ratio to SeasonalNaive" in result.output
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 4 and "SQL AutoETS" in scores.columns and scores["cutoff"].tolist() == [51, 55, 51, 55]


def test_an_overflowing_value_is_one_line_and_writes_nothing(forecaster, tmp_path):
    """1e308 is finite in float64 but infinite in the model's float32: refused before anything runs."""
    frame = monthly().astype({"y": object})
    frame.loc[14, "y"] = "1e308"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "carl", "forecast", str(forecaster), "--csv", str(tmp_path / "bad.csv"),
                           "--no-baselines", "--out", str(tmp_path / "f.png")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'bad.csv'}: series 'north' is infinite at 2016-03-01")
    assert not list(tmp_path.glob("f*"))


@pytest.mark.parametrize("value, message", [
    ("inf", "series 'north' is infinite at 2016-03-01"),
    ("", "series 'north' has no value at 2016-03-01"),
    ("abc", "series 'north' holds 'abc' at 2016-03-01: not a number"),
])
def test_bad_values_fail_naming_the_series_and_date(forecaster, cli, tmp_path, value, message):
    frame = monthly().astype({"y": object})
    frame.loc[14, "y"] = value
    frame.to_csv(tmp_path / "bad.csv", index=False)
    result = cli("forecast", forecaster, "--csv", tmp_path / "bad.csv", "--no-baselines", "--out", tmp_path / "f.png")
    assert result.exit_code != 0 and message in str(result.exception) and "\n" not in str(result.exception)


def test_short_irregular_and_missing_tables_are_one_line(forecaster, cli, tmp_path):
    monthly(5).to_csv(tmp_path / "short.csv", index=False)
    result = cli("forecast", forecaster, "--csv", tmp_path / "short.csv", "--no-baselines")
    assert "series 'north' has 5 observations before the origin; the forecaster needs at least 8" in str(result.exception)
    gappy = monthly().drop(index=[20])
    gappy.to_csv(tmp_path / "gap.csv", index=False)
    result = cli("forecast", forecaster, "--csv", tmp_path / "gap.csv", "--no-baselines")
    assert "series 'north' is not evenly spaced: 2016-08-01 is followed by 2016-10-01" in str(result.exception)
    result = cli("forecast", forecaster)
    assert "forecasts any series: give them with --csv FILE" in str(result.exception)
    result = cli("backtest", forecaster, "--csv", tmp_path / "short.csv", "-h", 3)
    assert "series 'north' has 5 observations; 3 windows of 3 steps" in str(result.exception)


def test_train_fits_a_forecaster_to_a_users_tables(tmp_path):
    monthly(80).to_parquet(tmp_path / "mine.parquet")
    cfg = load_recipe("ts-forecaster", [*TINY, "data={name: tables, paths: [" + str(tmp_path / "mine.parquet") + "], holdout: 12}"])
    out = train(cfg, output=tmp_path / "run", progress=False)
    from carl_timeseries.pipeline import Forecaster

    table = Forecaster.from_pretrained(out).predict(monthly(30), h=3, num_samples=4)
    assert len(table) == 6 and np.isfinite(table["0.5"]).all()
    from carl_timeseries.tables import SeriesTables, TablesConfig

    source = SeriesTables(TablesConfig(paths=(str(tmp_path / "mine.parquet"),), holdout=12))
    assert [len(s) for s in source.series()] == [68, 68]
    with pytest.raises(Exception, match="nothere.csv: no such file"):
        SeriesTables(TablesConfig(paths=(str(tmp_path / "nothere.csv"),))).dataset()


def test_carl_sample_draws_a_forecasters_windows_as_pictures(forecaster, tmp_path):
    """A forecaster's unconditional samples are windows scaled by their own past (no units to go
    back to): `carl sample` draws them as line charts instead of writing normalised tensors."""
    from carl.cli import app
    from PIL import Image

    result = CliRunner().invoke(app, ["sample", str(forecaster), "--num", "3", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    picture = Image.open(tmp_path / "s.png")
    assert picture.size[0] >= 3 * 160 and picture.size[1] >= 2 * 160  # rows x per_row panels of 160 px
