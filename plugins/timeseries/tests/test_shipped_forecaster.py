"""The shipped forecaster: found by name, beats seasonal naive zero-shot on real series it never
saw, and docs/forecasting.md runs as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from carl.plugins import pretrained_folders
from carl_timeseries.pipeline import DEFAULT, Forecaster

DOCS = Path(__file__).parents[3] / "docs" / "forecasting.md"


@pytest.fixture(scope="module")
def forecaster():
    return Forecaster.from_pretrained(DEFAULT)


def co2_monthly() -> pd.Series:
    """Mauna Loa CO2 (statsmodels; never in the forecaster's training data), monthly means 1980-2001."""
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    return weekly.resample("MS").mean().loc["1980":"2001-11"]


def test_the_forecaster_is_registered_with_its_recipe_and_card():
    folder = pretrained_folders()[DEFAULT]
    assert {"config.json", "model.safetensors", "recipe.yaml", "README.md"} <= {p.name for p in folder.iterdir()}
    assert "carl train ts-forecaster" in (folder / "README.md").read_text()


def test_beats_seasonal_naive_zero_shot_on_a_series_it_never_saw(forecaster):
    co2 = co2_monthly()
    y = co2.to_numpy()
    h, origins = 18, [len(y) - 18 * k for k in (3, 2, 1)]
    paths = forecaster.sample_histories([y[:o] for o in origins], h, num_samples=100, seed=0)  # (S, 3, h)
    truth = np.stack([y[o : o + h] for o in origins])
    crps = np.mean(np.abs(paths - truth).mean(0) - 0.5 * np.abs(paths[:, None] - paths[None]).mean((0, 1)))
    naive = np.stack([np.resize(y[o - 12 : o], h) for o in origins])  # the last year repeated
    mae_naive = np.abs(naive - truth).mean()  # a point forecast's CRPS is its absolute error
    assert crps < 0.7 * mae_naive, (crps, mae_naive)
    median = np.median(paths, axis=0)
    assert np.abs(median - truth).mean() < 0.7 * mae_naive


def test_predict_gives_ordered_quantiles_in_the_series_units(forecaster):
    co2 = co2_monthly()
    df = pd.DataFrame({"unique_id": "co2", "ds": co2.index, "y": co2.to_numpy()})
    both = pd.concat([df, df.assign(unique_id="co2 in ppb", y=df["y"] * 1000)])
    table = forecaster.predict(both, h=6, num_samples=50)
    a, b = (table[table["unique_id"] == u] for u in ("co2", "co2 in ppb"))
    levels = [f"0.{k}" for k in range(1, 10)]
    assert (np.diff(a[levels].to_numpy(), axis=1) >= 0).all() and a["ds"].iloc[0] == pd.Timestamp("2001-12-01")
    assert 360 < a["0.5"].iloc[0] < 380 and b["0.5"].iloc[0] == pytest.approx(1000 * a["0.5"].iloc[0], rel=0.02)


def test_the_finetune_recipe_starts_from_the_shipped_weights(forecaster, tmp_path):
    """`carl train ts-forecaster-finetune` loads carl-forecaster strictly before step 0: one step at
    a negligible rate leaves its weights as shipped."""
    from carl.api import train
    from carl.config import load_recipe

    co2 = co2_monthly()
    pd.DataFrame({"unique_id": "co2", "ds": co2.index, "y": co2.to_numpy()}).to_csv(tmp_path / "co2.csv", index=False)
    cfg = load_recipe("ts-forecaster-finetune", [f"data.paths=[{tmp_path / 'co2.csv'}]", "train.max_steps=1",
                                                 "train.lr=1e-9", "train.global_batch=8", "train.tracker=none",
                                                 "train.checkpoint_every=null"])
    tuned = Forecaster.from_pretrained(train(cfg, output=tmp_path / "ft", progress=False))
    shipped = forecaster.model.state_dict()
    for name, value in tuned.model.state_dict().items():
        torch.testing.assert_close(value, shipped[name], atol=1e-6, rtol=0, msg=name)


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def test_every_code_block_of_the_forecasting_docs_runs(tmp_path):
    """Python blocks run in one namespace (in order), then bash blocks as commands, in a fresh folder."""
    found = blocks(DOCS.read_text())
    assert [lang for lang, _ in found if lang in ("python", "bash")]
    namespace: dict = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for lang, code in found:
            if lang == "python":
                exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102
            elif lang == "bash":
                for line in code.strip().splitlines():
                    args = shlex.split(line)
                    assert args[0] == "carl"
                    proc = subprocess.run([sys.executable, "-m", "carl", *args[1:]], capture_output=True, text=True)
                    assert proc.returncode == 0, (line, proc.stderr[-2000:])
    finally:
        os.chdir(cwd)
    assert (tmp_path / "fan.png").exists() and (tmp_path / "fan-quantiles.csv").exists()
