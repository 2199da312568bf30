"""The forecasting benchmark: a carl forecaster against statsforecast's baselines on 99 real
series of five frequencies, scored the way fev-bench scores.

    python benchmarks/forecasting.py                       # the shipped forecaster, carl-forecaster
    python benchmarks/forecasting.py runs/ts-forecaster    # any forecaster folder

Series (offline; :mod:`carl_timeseries.tasks`): macrodata's four (32 origins 2000Q1-2007Q4, 8
quarters ahead) and the 95 series of R's fpp2 and forecast packages with a regular yearly,
quarterly, monthly, weekly or daily step and no gap, in 33 tables (tasks); horizons 6 / 8 / 18 /
13 / 14 steps; the last 2 / 2 / 3 / 5 / 5 non-overlapping horizons of each series are forecast
from everything before them. Metrics (:mod:`carl_timeseries.metrics`): SQL (scaled quantile loss
over the levels 0.1..0.9), WQL and MASE per forecast, averaged per task, then each model's
geometric mean ratio to SeasonalNaive over tasks (lower is better) and its win rate; on
macrodata also the energy score of whole 8 x 4 horizons (channels in units of their pre-2000
spread; carl and the baselines forecast each channel on its own).

The baselines are deterministic given the data, so their quantiles and macrodata's simulated
paths are cached in ``benchmarks/cache/forecasting-baselines.npz`` (keyed by a hash of the data,
the settings and statsforecast's version; recomputed when the key differs or with --refresh,
about 15 minutes on 2 cores, mostly AutoARIMA on the weekly series). Writes
``benchmarks/out/forecasting.json``: ``{"overall": {forecaster: {metric: value}}, "yearly": ...,
"macrodata": ...}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from carl_timeseries.backtest import Cut, errors_of
from carl_timeseries.baselines import NAMES, quantile_forecasts, simulate_paths
from carl_timeseries.metrics import QUANTILES, energy_scores, summary, task_means
from carl_timeseries.pipeline import DEFAULT, Forecaster
from carl_timeseries.sampling import quantiles_of, sample_paths
from carl_timeseries.tasks import FREQUENCIES, HORIZON, MACRO_CUTOFF, Task, benchmark_tasks

ROOT = Path(__file__).parent
CACHE = ROOT / "cache" / "forecasting-baselines.npz"
OUT = ROOT / "out" / "forecasting.json"
MACRO_PATHS = 100  # simulated paths per macrodata window for the energy score


def groups(tasks: tuple[Task, ...]) -> dict[str, tuple[list[Task], list[Cut]]]:
    """Per frequency: its series and their cuts (series index into that list, origin)."""
    out = {}
    for freq in FREQUENCIES:
        series = [t for t in tasks if t.frequency == freq]
        cuts = [Cut(i, o) for i, t in enumerate(series) for o in t.origins]
        out[freq] = (series, cuts)
    return out


def cache_key(tasks: tuple[Task, ...]) -> str:
    import statsforecast

    h = hashlib.sha256()
    for t in tasks:
        h.update(t.name.encode())
        h.update(np.ascontiguousarray(t.values).tobytes())
        h.update(np.asarray(t.origins).tobytes())
    h.update(json.dumps([HORIZON, QUANTILES, MACRO_PATHS, statsforecast.__version__]).encode())
    return h.hexdigest()


def baseline_results(tasks, refresh: bool, n_jobs: int) -> dict[str, np.ndarray]:
    """``{"<freq>/<model>": (B, H, Q), "macro/<model>": (S, B, H)}``, from the cache when it holds this key."""
    key = cache_key(tasks)
    if CACHE.exists() and not refresh:
        stored = np.load(CACHE)
        if str(stored["key"]) == key:
            return {k: stored[k] for k in stored.files if k != "key"}
        print(f"{CACHE}: made for other data or settings; recomputing the baselines")
    out = {}
    for freq, (series, cuts) in groups(tasks).items():
        start = time.perf_counter()
        histories = [series[c.series].values[: c.origin] for c in cuts]
        for name, q in quantile_forecasts(histories, HORIZON[freq], series[0].season, NAMES, n_jobs=n_jobs).items():
            out[f"{freq}/{name}"] = q.astype(np.float32)
        print(f"baselines, {freq}: {len(cuts)} forecasts in {time.perf_counter() - start:.0f} s")
    macro = [t for t in tasks if t.task == "macro"]
    histories = [t.values[:o] for t in macro for o in t.origins]
    for name, p in simulate_paths(histories, HORIZON["quarterly"], 4, MACRO_PATHS, seed=0, n_jobs=n_jobs).items():
        out[f"macro/{name}"] = p.astype(np.float32)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(CACHE, key=key, **out)
    print(f"wrote {CACHE}")
    return out


def carl_results(forecaster: Forecaster, tasks, num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """carl's quantiles per frequency and its macrodata sample paths, in the baselines' layout."""
    out = {}
    for freq, (series, cuts) in groups(tasks).items():
        histories = [series[c.series].values[: c.origin] for c in cuts]
        paths = forecaster.sample_histories(histories, HORIZON[freq], num_samples, seed)
        out[f"{freq}/carl"] = quantiles_of(paths, QUANTILES)
        if freq == "quarterly":  # macrodata's cuts come first: its tasks lead the list
            macro = [i for i, c in enumerate(cuts) if series[c.series].task == "macro"]
            out["macro/carl"] = paths[:, macro]
    return out


def evaluate(tasks, results: dict[str, np.ndarray], label: str) -> dict:
    names = [label, *NAMES]
    rename = {"carl": label}
    per_task, sections = [], {}
    for freq, (series, cuts) in groups(tasks).items():
        quantiles = {rename.get(k.split("/")[1], k.split("/")[1]): v for k, v in results.items() if k.startswith(freq + "/")}
        errors = errors_of([t.values for t in series], [t.name for t in series], cuts, HORIZON[freq], series[0].season,
                           {n: quantiles[n] for n in names})
        means = task_means(errors, {t.name: t.task for t in series})
        per_task.append(means)
        sections[freq] = summary(means)
    sections = {"overall": summary(pd.concat(per_task)), **sections}
    sections["macrodata"] = macro_energy(tasks, results, names, rename)
    counts = {freq: len({t.task for t in groups(tasks)[freq][0]}) for freq in FREQUENCIES}
    return {**sections, "tasks": counts}


def macro_energy(tasks, results, names, rename) -> dict:
    macro = [t for t in tasks if t.task == "macro"]
    windows = len(macro[0].origins)
    horizon = HORIZON["quarterly"]
    truth = np.stack([[t.values[o : o + horizon] for o in t.origins] for t in macro], axis=-1)  # (B, H, C)
    scale = np.array([t.values[t.dates < MACRO_CUTOFF].std() for t in macro])
    out = {}
    for key, paths in results.items():
        if not key.startswith("macro/"):
            continue
        name = rename.get(key.split("/")[1], key.split("/")[1])
        s = paths.shape[0]
        joint = paths.reshape(s, len(macro), windows, horizon).transpose(0, 2, 3, 1)  # (S, B, H, C)
        out[name] = {"energy score": energy_scores(joint, truth, scale)}
    return {n: out[n] for n in names}


def table(sections: dict, label: str) -> list[str]:
    """The README's markdown tables: per frequency and overall (gmean ratios, win rate) and macrodata."""
    lines = ["| forecaster | " + " | ".join(f"SQL {s}" for s in ["overall", *FREQUENCIES]) + " | WQL overall | MASE overall | win rate |",
             "|---|" + "---|" * (len(FREQUENCIES) + 4)]
    for name in sections["overall"]:
        row = [sections[s][name][f"SQL (gmean ratio to SeasonalNaive)"] for s in ["overall", *FREQUENCIES]]
        o = sections["overall"][name]
        row += [o["WQL (gmean ratio to SeasonalNaive)"], o["MASE (gmean ratio to SeasonalNaive)"], o["win rate (SQL)"]]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", "| forecaster | macrodata energy score |", "|---|---|"]
    lines += [f"| {n} | {v['energy score']:.3f} |" for n, v in sections["macrodata"].items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=DEFAULT, help="a forecaster: a shipped name, a folder or a Hub id")
    parser.add_argument("--samples", type=int, default=100, help="carl's sample paths per forecast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0, help="carl's sampling temperature")
    parser.add_argument("--refresh", action="store_true", help="recompute the cached baselines")
    parser.add_argument("--n-jobs", type=int, default=2, help="processes for statsforecast")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.perf_counter()
    tasks = benchmark_tasks()
    forecaster = Forecaster.from_pretrained(args.model)
    forecaster.temperature = args.temperature
    label = forecaster.name
    results = baseline_results(tasks, args.refresh, args.n_jobs)
    began = time.perf_counter()
    results.update(carl_results(forecaster, tasks, args.samples, args.seed))
    carl_seconds = time.perf_counter() - began
    sections = evaluate(tasks, results, label)
    sections["setup"] = {"model": str(args.model), "samples": args.samples, "seed": args.seed, "temperature": args.temperature, "carl seconds": round(carl_seconds, 1),
                         "metrics": "geometric mean over tasks of the ratio to SeasonalNaive (lower is better); win rate on SQL"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(sections, indent=2))
    print("\n".join(table(sections, label)))
    print(f"tasks per frequency: {sections['tasks']}; carl's forecasts {carl_seconds:.0f} s, all {time.perf_counter() - start:.0f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
