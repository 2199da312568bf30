"""Forecasts of the time-series plugin on the held-out years against two baselines, and fan charts.

    carl train ts-macro-energy && python benchmarks/timeseries.py runs/ts-macro-energy

For every validation window (forecast origins 2000Q1 ... 2007Q4, 8 quarters ahead from the 24
before): the energy score of the whole 8 x 4 forecast (channels in units of their training-period
standard deviation) and the CRPS per channel (original units), for the model's 200 sample paths,
the last value repeated, and the seasonal naive forecast (the last 4 quarters repeated).
Lower is better. Writes the fan charts of one window as a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from carl.hub import load_model
from carl_timeseries.data import CHANNELS, MacroSeries
from carl_timeseries.forecast import forecast, last_value, scores, seasonal_naive


def fan_chart(past: np.ndarray, truth: np.ndarray, paths: np.ndarray, path: Path) -> None:
    """One panel per channel: the past, the truth, the median and the 50% / 90% bands."""
    w, h, pad = 320, 180, 24
    image = Image.new("RGB", (w * len(CHANNELS), h + 2 * pad), "white")
    draw = ImageDraw.Draw(image)
    n_past, horizon = len(past), len(truth)
    for c, name in enumerate(CHANNELS):
        x0 = c * w + 10
        values = np.concatenate([past[:, c], truth[:, c], paths[..., c].ravel()])
        lo, hi = np.percentile(values, 1), np.percentile(values, 99)
        lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)

        def xy(t, v):
            v = min(max(v, lo), hi)  # keep outliers inside the panel
            return x0 + t * (w - 30) / (n_past + horizon - 1), pad + (h - 1) * (1 - (v - lo) / (hi - lo))

        for q, colour in ((5, (200, 215, 240)), (25, (150, 180, 230))):
            low, high = np.percentile(paths[..., c], q, axis=0), np.percentile(paths[..., c], 100 - q, axis=0)
            poly = [xy(n_past + i, v) for i, v in enumerate(low)] + [xy(n_past + i, v) for i, v in reversed(list(enumerate(high)))]
            draw.polygon(poly, fill=colour)
        draw.line([xy(i, v) for i, v in enumerate(past[:, c])], fill="black", width=2)
        draw.line([xy(n_past - 1 + i, v) for i, v in enumerate(np.r_[past[-1, c], truth[:, c]])], fill=(200, 40, 40), width=2)
        draw.line([xy(n_past + i, v) for i, v in enumerate(np.median(paths[..., c], axis=0))], fill=(30, 60, 160), width=2)
        draw.text((x0, 4), name, fill="black")
    draw.text((10, h + pad + 6), "black: past   red: truth   blue: median forecast   bands: 50% and 90%", fill="black")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/out/ts_fan_chart.png")
    args = parser.parse_args()
    model, recipe = load_model(args.checkpoint)
    source = recipe.data.build("datasets")
    windows = torch.from_numpy(source.windows("validation"))
    context = model.tokenizer.config.context
    truth = windows[:, context:]
    scale = torch.from_numpy(MacroSeries(source.config).windows("train")).flatten(0, 1).std(0)
    start = time.perf_counter()
    paths = forecast(model, windows, args.samples, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    rows = {"carl (ts-macro-energy)": scores(paths, truth, scale),
            "last value": scores(last_value(windows, context), truth, scale),
            "seasonal naive (4 quarters)": scores(seasonal_naive(windows, context), truth, scale)}
    print(f"{len(windows)} validation windows, {args.samples} sample paths each ({seconds:.1f} s)")
    print("| forecast | energy score | " + " | ".join(f"CRPS {c}" for c in CHANNELS) + " |")
    print("|---|---|" + "---|" * len(CHANNELS))
    for name, s in rows.items():
        print(f"| {name} | {s['energy_score']:.3f} | " + " | ".join(f"{v:.3f}" for v in s["crps"].tolist()) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    k = len(windows) // 2
    fan_chart(windows[k, :context].numpy(), truth[k].numpy(), paths[:, k].numpy(), Path(args.out))
    print(f"fan chart (window {k}): {args.out}")


if __name__ == "__main__":
    main()
