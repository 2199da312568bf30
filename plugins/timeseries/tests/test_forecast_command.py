"""`carl forecast`: scores at an origin, sample paths as a table, a dated fan chart, a user's own CSV
with one-line errors; the ETS and ARIMA baselines."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from carl.config import load_recipe
from carl.errors import CarlError
from carl.plugins import register_commands
from carl.api import train
from carl_timeseries.baselines import BASELINES, NAMES, quantile_forecasts, simulate_paths
from carl_timeseries.chart import fan_chart
from carl_timeseries.data import CHANNELS, UNITS, macro_history
from carl_timeseries.forecast import scores
from carl_timeseries.history import History, forecast_window, parse_dates, read_history, write_history


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts")
    cfg = load_recipe("ts-macro-energy", ["train.epochs=1", "train.checkpoint_every=null", "train.tracker=none"])
    return train(cfg, output=out, progress=False)


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a group, so that `forecast` is a subcommand
    register_commands(app)  # `carl forecast` comes from the plugin's register_commands hook
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def table_row(output: str, name: str) -> list[float]:
    line = next(line for line in output.splitlines() if line.startswith(name + "  "))
    return [float(v) for v in line[len(name):].split()]


def test_forecast_scores_writes_paths_and_a_dated_fan_chart(run, cli, tmp_path):
    result = cli("forecast", run, "--origin", "2004Q1", "--paths", 20, "--out", tmp_path / "new" / "fan.png")
    assert result.exit_code == 0, result.output
    assert "from 2004Q1: 8 steps to 2005Q4, from the 24 before (1998Q1-2003Q4)" in result.output
    assert "scores against the truth of 8 of 8 steps" in result.output
    rows = {name: table_row(result.output, name) for name in ("carl", *NAMES)}
    assert all(len(r) == 5 and all(np.isfinite(r)) for r in rows.values())
    # The truth the command scores against is the data at those dates: the seasonal naive row, recomputed.
    h = macro_history()
    at = list(h.dates).index(pd.Timestamp("2004-01-01"))
    window = torch.from_numpy(h.values[at - 24 : at + 8])[None]
    paths = BASELINES["SeasonalNaive"](window, 24, 20, 0)  # the command's draws (20 paths, seed 0)
    expected = scores(paths, window[:, 24:], torch.from_numpy(h.values[:at].std(0)))
    assert rows["SeasonalNaive"] == pytest.approx([expected["energy_score"].item(), *expected["crps"].tolist()], abs=1e-3)

    paths = pd.read_csv(tmp_path / "new" / "fan.csv")
    assert list(paths.columns) == ["path", "date", *CHANNELS] and len(paths) == 20 * 8
    assert paths["date"].iloc[:8].tolist() == ["2004Q1", "2004Q2", "2004Q3", "2004Q4", "2005Q1", "2005Q2", "2005Q3", "2005Q4"]
    assert paths["path"].nunique() == 20 and np.isfinite(paths[list(CHANNELS)].to_numpy()).all()
    from PIL import Image

    assert Image.open(tmp_path / "new" / "fan.png").size[0] > 800


def test_own_csv_forecasts_like_the_builtin_history_and_past_its_end(run, cli, tmp_path):
    h = macro_history()
    end = list(h.dates).index(pd.Timestamp("2005-10-01")) + 1  # the user's file stops at 2005Q4
    own = write_history(History(h.values[:end], h.dates[:end], h.channels, h.units, "own"), tmp_path / "own.csv")
    builtin = cli("forecast", run, "--origin", "2004Q1", "--paths", 8, "--no-baselines", "--out", tmp_path / "a.png")
    mine = cli("forecast", run, "--csv", own, "--origin", "2004Q1", "--paths", 8, "--no-baselines", "--out", tmp_path / "b.png",
               "--samples", tmp_path / "b.parquet")
    assert builtin.exit_code == 0 and mine.exit_code == 0, mine.output
    assert table_row(builtin.output, "carl") == table_row(mine.output, "carl")
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_parquet(tmp_path / "b.parquet")
    np.testing.assert_allclose(a[list(CHANNELS)].to_numpy(), b[list(CHANNELS)].to_numpy(), rtol=1e-5)

    future = cli("forecast", run, "--csv", own, "--paths", 4, "--no-baselines", "--out", tmp_path / "c.svg")
    assert future.exit_code == 0, future.output
    assert "from 2006Q1: 8 steps to 2007Q4" in future.output and "no truth after 2005Q4: nothing to score" in future.output
    assert pd.read_csv(tmp_path / "c.csv")["date"].iloc[0] == "2006Q1" and (tmp_path / "c.svg").exists()


def test_csv_errors_are_one_line(run, tmp_path):
    h = macro_history()
    frame = pd.DataFrame(h.values, columns=["gdp growth", "consumption growth", "unemployment", "infl"])
    frame.insert(0, "date", [h.label(d) for d in h.dates])
    frame.to_csv(tmp_path / "bad.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "carl", "forecast", str(run), "--csv", str(tmp_path / "bad.csv")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bad.csv'}: the model forecasts the columns 'gdp growth', 'consumption growth', "
        "'unemployment', 'inflation': missing 'inflation'; unexpected 'infl'")



@pytest.mark.parametrize("big", ["inf", "1e308"])
def test_an_infinite_or_overflowing_history_is_one_line_and_writes_nothing(run, tmp_path, big):
    """1e308 is finite in float64 but inf in the model's float32: refused before sampling, no all-NaN fan.csv."""
    h = macro_history()
    frame = pd.DataFrame(h.values, columns=list(CHANNELS)).astype(object)
    frame.insert(0, "date", [h.label(d) for d in h.dates])
    frame.iloc[-3, 2] = big
    frame.to_csv(tmp_path / "big.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "carl", "forecast", str(run), "--csv", str(tmp_path / "big.csv"),
                           "--no-baselines", "--out", str(tmp_path / "fan.png")], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'big.csv'}: '{CHANNELS[1]}' is infinite at {h.label(h.dates[-3])}")
    assert not (tmp_path / "fan.csv").exists() and not (tmp_path / "fan.png").exists()

def write(tmp_path, text: str):
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


def test_history_errors_name_the_file_and_what_to_do(tmp_path):
    two = ("a", "b")
    with pytest.raises(CarlError, match="no date column 'date' .* --date-column"):
        read_history(write(tmp_path, "when,a,b\n2000-01-01,1,2\n"), two)
    with pytest.raises(CarlError, match="evenly spaced"):
        read_history(write(tmp_path, "date,a,b\n2000-01-01,1,2\n2000-02-01,1,2\n2000-05-01,1,2\n"), two)
    with pytest.raises(CarlError, match="not a number"):
        read_history(write(tmp_path, "date,a,b\n2000Q1,1,2\n2000Q2,x,2\n2000Q3,1,2\n"), two)
    with pytest.raises(CarlError, match="no such file"):
        read_history(tmp_path / "missing.csv", two)
    for big in ("inf", "1e308", "-1e39"):  # finite in float64, infinite once cast to the model's float32
        with pytest.raises(CarlError, match=r"'b' is infinite at 2000Q2 \(or beyond float32's range"):
            read_history(write(tmp_path, f"date,a,b\n2000Q1,1,2\n2000Q2,1,{big}\n2000Q3,1,2\n"), two)

    h = macro_history()
    with pytest.raises(CarlError, match=r"macrodata: 11 steps of history before 1962Q1, the model reads 24; choose a later --origin"):
        forecast_window(h, "1962Q1", 24, 8)
    with pytest.raises(CarlError, match=r"--origin 2011Q1 is after 2009Q4, the step after the last date"):
        forecast_window(h, "2011Q1", 24, 8)
    with pytest.raises(CarlError, match="is not a date"):
        forecast_window(h, "soon", 24, 8)
    gappy = h.values.copy()
    gappy[100, 3] = np.nan
    with pytest.raises(CarlError, match=rf"'inflation' has no value at {h.label(h.dates[100])}, inside the 24 steps"):
        forecast_window(History(gappy, h.dates, h.channels, h.units, "macrodata"), h.label(h.dates[110]), 24, 8)


def test_origins_resolve_to_the_first_date_on_or_after_them():
    dates = parse_dates(["2000-03-31", "2000-06-30", "2000-09-30", "2000-12-31"])  # quarter ends
    h = History(np.arange(8, dtype=np.float32).reshape(4, 2), dates, ("a", "b"), ("", ""), "ends")
    w = forecast_window(h, "2000Q3", 2, 3)  # 2000Q3 -> 2000-09-30
    assert w.future_dates[0] == pd.Timestamp("2000-09-30") and w.known == 2 and h.label(w.future_dates[-1]) == "2001Q1"
    np.testing.assert_array_equal(w.window[0, :2], h.values[:2])
    assert np.isnan(w.window[0, 4]).all()


def test_fan_chart_has_dates_units_and_a_legend():
    h = macro_history()
    w = forecast_window(h, "2004Q1", 24, 8)
    paths = np.random.default_rng(0).normal(size=(50, 8, 4)) + w.window[0, 23]
    fig = fan_chart(w.past_dates, w.window[0, :24], w.future_dates, paths, channels=CHANNELS, units=UNITS,
                    truth=w.window[0, 24:], title="t")
    fig.canvas.draw()
    axes = fig.axes
    assert [a.get_title() for a in axes] == list(CHANNELS) and [a.get_ylabel() for a in axes] == list(UNITS)
    assert any("2004" in t.get_text() for t in axes[-1].get_xticklabels())  # a date axis
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["90% band", "50% band", "median forecast", "observed", "truth"]


def test_simulated_paths_follow_each_fitted_model_from_the_end_of_the_past():
    """statsforecast's simulated paths (what the energy score judges) agree with the same model's
    own quantile forecast: their median with its point forecast, their spread with its interval."""
    rng = np.random.default_rng(0)
    y = np.empty(60)
    y[0] = 5.0
    for t in range(1, 60):  # AR(1) around 5, phi 0.7
        y[t] = 5 + 0.7 * (y[t - 1] - 5) + rng.standard_normal()
    histories = [y, np.cumsum(rng.standard_normal(60)) + 20]
    paths = simulate_paths(histories, 8, 4, num_paths=2000, seed=1)
    assert paths["AutoARIMA"].shape == (2000, 2, 8)
    np.testing.assert_array_equal(paths["AutoETS"], simulate_paths(histories, 8, 4, num_paths=2000, seed=1)["AutoETS"])
    quantiles = quantile_forecasts(histories, 8, 4)
    for name in ("AutoARIMA", "AutoETS"):
        sims = np.quantile(paths[name], [0.1, 0.5, 0.9], axis=0)  # (3, B, H)
        expected = quantiles[name][..., [0, 4, 8]].transpose(2, 0, 1)
        np.testing.assert_allclose(sims[:, :, 0], expected[:, :, 0], atol=0.15 * (expected[2] - expected[0])[:, 0].max())
    # the ensemble's paths are an equal mixture of its three members'
    mixed = paths["StatEnsemble"]
    for k, member in enumerate(("AutoARIMA", "AutoETS", "AutoTheta")):
        np.testing.assert_array_equal(mixed[k::3], paths[member][k::3])
    assert set(BASELINES) == set(NAMES)


def test_windows_at_different_levels_keep_their_own_statistics(run):
    """Each window's paths are read in its own units: a batch of a window and a rescaled copy of
    it gives the first window's paths, rescaled (the same noise: the same batch position and seed)."""
    from carl.model import load_model
    from carl_timeseries.forecast import forecast

    model, _ = load_model(run)
    w = torch.from_numpy(macro_history().values[100:132])[None]
    shifted = w * 100 + 5000
    mixed = forecast(model, torch.cat([w, shifted]), 6, torch.Generator().manual_seed(3))
    plain = forecast(model, torch.cat([w, w]), 6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(mixed[:, 0], plain[:, 0])
    torch.testing.assert_close(mixed[:, 1], plain[:, 1] * 100 + 5000, rtol=1e-4, atol=1e-2)


def test_energy_score_divides_each_channel_by_its_scale():
    rng = np.random.default_rng(0)
    samples = torch.from_numpy(rng.normal(size=(4, 1, 3, 2))).float()
    truth = torch.from_numpy(rng.normal(size=(1, 3, 2))).float()
    scale = torch.tensor([2.0, 0.5])
    got = scores(samples, truth, scale)["energy_score"].item()
    x = (samples[:, 0] / scale).flatten(1).numpy()
    y = (truth[0] / scale).flatten().numpy()
    pairs = [np.linalg.norm(x[i] - x[j]) for i in range(4) for j in range(4) if i != j]
    assert got == pytest.approx(np.mean([np.linalg.norm(xi - y) for xi in x]) - 0.5 * np.mean(pairs), rel=1e-5)


def test_the_latest_origin_is_the_step_after_the_last_date():
    h = macro_history()
    w = forecast_window(h, "2009Q4", 24, 8)  # the data ends in 2009Q3
    assert w.known == 0 and h.label(w.future_dates[0]) == "2009Q4" and h.label(w.past_dates[-1]) == "2009Q3"
    np.testing.assert_array_equal(w.window[0, :24], h.values[-24:])
    with pytest.raises(CarlError, match="--origin 2010Q1 is after 2009Q4"):
        forecast_window(h, "2010Q1", 24, 8)


def test_a_horizon_step_observed_in_some_channels_only_ends_the_known_steps():
    h = macro_history()
    values = h.values.copy()
    at = list(h.dates).index(pd.Timestamp("2004-01-01"))
    values[at + 3, 1] = np.nan  # the fourth forecast quarter lacks one channel
    w = forecast_window(History(values, h.dates, h.channels, h.units, "gappy"), "2004Q1", 24, 8)
    assert w.known == 3
    np.testing.assert_array_equal(w.window[0, 24 + 3, [0, 2, 3]], h.values[at + 3, [0, 2, 3]])


def test_carl_sample_writes_a_window_models_samples_in_the_channels_units(run, tmp_path):
    """Unconditional windows are generated standardised; `carl sample` writes them in data units."""
    from carl.cli import app

    result = CliRunner().invoke(app, ["sample", str(run), "--num", "8", "--out", str(tmp_path / "s.pt")])
    assert result.exit_code == 0, result.output
    samples = torch.load(tmp_path / "s.pt")
    assert samples.shape == (8, 32, 4)
    level = samples[..., CHANNELS.index("unemployment")].median()
    assert 3 < level < 11, level  # US unemployment 1959-1999 (%), not the standardised ~0
