"""Forecasts of the time-series plugin on the held-out years against four baselines, and a fan chart.

    carl train ts-macro-energy && python benchmarks/timeseries.py runs/ts-macro-energy

For every validation window (forecast origins 2000Q1 ... 2007Q4, 8 quarters ahead from the 24
before): the energy score of the whole 8 x 4 forecast (channels in units of their training-period
standard deviation) and the CRPS per channel (original units), for the model's sample paths, the
last value repeated, the seasonal naive forecast (the last 4 quarters repeated), and ETS and ARIMA
fitted per window and channel (statsmodels; orders chosen by AICc; as many simulated paths).
Lower is better. The forecasting, scoring and chart code is the plugin's (`carl forecast` uses it
for one origin); this script only loops over the validation windows and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from carl.model import load_model
from carl_timeseries.data import FIRST_VALIDATION_YEAR, MacroSeries
from carl_timeseries.chart import fan_chart
from carl_timeseries.forecast import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=200, help="sample paths per window (carl, ETS, ARIMA)")
    parser.add_argument("--out", default="benchmarks/out/ts_fan_chart.png", help="the fan chart of the window from 2004Q1")
    parser.add_argument("--windows", type=int, default=None,
                        help="score only the first N validation windows (a quick check; the README's table uses all)")
    args = parser.parse_args()
    if args.windows is not None and args.windows < 1:
        parser.error(f"--windows must be at least 1, got {args.windows}")
    model, recipe = load_model(args.checkpoint)
    source: MacroSeries = recipe.data.build("datasets")
    windows = torch.from_numpy(source.windows("validation"))[: args.windows]
    context = model.tokenizer.config.context
    scale = torch.from_numpy(source.windows("train")).flatten(0, 1).std(0)
    results = compare(model, windows, args.samples, scale=scale, seed=0)

    print(f"{len(windows)} validation windows, {args.samples} sample paths each")
    print("| forecast | energy score | " + " | ".join(f"CRPS {c}" for c in source.channels) + " | seconds |")
    print("|---|---|" + "---|" * len(source.channels) + "---|")
    for name, r in results.items():
        crps = " | ".join(f"{v:.3f}" for v in r.scores["crps"].tolist())
        print(f"| {name} | {r.scores['energy_score']:.3f} | {crps} | {r.seconds:.1f} |")

    history = source.history()
    first = int((history.dates.year < FIRST_VALIDATION_YEAR).sum())  # index of 2000Q1
    k = len(windows) // 2  # the window forecasting from 2004Q1
    origin = first + k
    horizon = windows.shape[1] - context
    fan_chart(history.dates[origin - context : origin], windows[k, :context].numpy(),
              history.dates[origin : origin + horizon], results["carl"].paths[:, k].numpy(),
              channels=source.channels, units=source.units, truth=windows[k, context:].numpy(), path=Path(args.out),
              title=f"{recipe.data.name}: carl forecast from {history.label(history.dates[origin])}, {args.samples} sample paths")
    print(f"fan chart (from {history.label(history.dates[origin])}): {args.out}")


if __name__ == "__main__":
    main()
