"""The plugin's commands: ``carl forecast`` (any forecaster or window model) and ``carl backtest``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def add_commands(app: typer.Typer) -> None:
    @app.command("forecast")
    def forecast(
        run: Annotated[str, typer.Argument(help="A forecaster: a shipped name (carl-forecaster), a model folder or a Hub repo id.")],
        csv: Annotated[Optional[Path], typer.Option("--csv", help="Your series: a CSV or Parquet table, long (unique_id, ds, y) or wide (a date column, one column per series).")] = None,
        horizon: Annotated[Optional[int], typer.Option("--horizon", "-h", min=1, help="Steps to forecast (default: by frequency, yearly 6, quarterly 8, monthly 18, weekly 13, daily 14).")] = None,
        origin: Annotated[Optional[str], typer.Option("--origin", help="The first step forecast: 2004Q1, 2004-01-01 (default: the step after the last date).")] = None,
        paths: Annotated[int, typer.Option("--paths", min=1, help="Sample paths to draw.")] = 200,
        out: Annotated[Path, typer.Option("--out", help="The fan chart: .png, .svg or .pdf.")] = Path("forecast.png"),
        samples: Annotated[Optional[Path], typer.Option("--samples", help="The sample paths: .csv or .parquet (default: --out as .csv).")] = None,
        quantiles: Annotated[Optional[Path], typer.Option("--quantiles", help="The quantile table: .csv or .parquet (default: <out>-quantiles.csv).")] = None,
        date_column: Annotated[Optional[str], typer.Option("--date-column", help="The date column of a wide table (default: ds or date).")] = None,
        baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also fit statsforecast's AutoARIMA, AutoETS, AutoTheta, SeasonalNaive and their ensemble (scored, and drawn in the chart).")] = True,
        season: Annotated[Optional[int], typer.Option("--season", min=1, help="The baselines' season length (default: from the frequency).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler and of the baselines' simulations.")] = 0,
    ) -> None:
        """Forecast series: quantiles and sample paths (CSV/Parquet), fan charts, and scores where the truth is known."""
        loaded = _open(run)
        if loaded.model.tokenizer.config.channels == 1:
            from carl_timeseries.pipeline import Forecaster
            from carl_timeseries.series_commands import run_series_forecast

            if csv is None:
                raise _usage(f"{run} forecasts any series: give them with --csv FILE (long: unique_id, ds, y; or wide)")
            result = run_series_forecast(Forecaster(loaded.model, Path(run).name), csv, horizon=horizon, origin=origin,
                                         num_paths=paths, out=out, samples=samples, quantiles_path=quantiles,
                                         time_column=date_column, baselines=baselines, season=season, seed=seed)
            for line in result.lines:
                typer.echo(line)
            return
        from carl_timeseries.commands import run_forecast

        report = run_forecast(str(loaded.folder), origin=origin, num_paths=paths, out=out, samples=samples, csv=csv,
                              date_column=date_column or "date", baselines=baselines, seed=seed)
        for line in report.lines(run):
            typer.echo(line)

    @app.command("backtest")
    def backtest(
        run: Annotated[str, typer.Argument(help="A forecaster: a shipped name (carl-forecaster), a model folder or a Hub repo id.")],
        csv: Annotated[Path, typer.Option("--csv", help="Your series: a CSV or Parquet table, long (unique_id, ds, y) or wide.")],
        horizon: Annotated[Optional[int], typer.Option("--horizon", "-h", min=1, help="Steps ahead (default: by frequency).")] = None,
        windows: Annotated[int, typer.Option("--windows", min=1, help="Rolling origins per series: the last WINDOWS horizons.")] = 3,
        paths: Annotated[int, typer.Option("--paths", min=1, help="Sample paths per forecast.")] = 100,
        date_column: Annotated[Optional[str], typer.Option("--date-column", help="The date column of a wide table (default: ds or date).")] = None,
        season: Annotated[Optional[int], typer.Option("--season", min=1, help="Season length of the baselines and scales (default: from the frequency).")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="Also write the scores per series and origin (.csv or .parquet).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
    ) -> None:
        """Score rolling origins of your series: carl against statsforecast's baselines (SQL, WQL, MASE)."""
        from carl_timeseries.pipeline import Forecaster
        from carl_timeseries.series_commands import run_backtest

        loaded = _open(run)
        forecaster = Forecaster(loaded.model, Path(run).name)
        for line in run_backtest(forecaster, csv, horizon=horizon, windows=windows, num_paths=paths, time_column=date_column,
                                 season=season, seed=seed, out=out):
            typer.echo(line)


def _open(run: str):
    from carl.errors import CarlError
    from carl.model import open_model
    from carl_timeseries.tokenizer import SeriesTokenizer

    loaded = open_model(run)  # a folder, a shipped name (register_pretrained) or a Hub id
    if not isinstance(loaded.model.tokenizer, SeriesTokenizer):
        raise CarlError(f"{run} is not a time-series model (tokenizer {type(loaded.model.tokenizer).__name__}); "
                        f"carl forecast needs the 'series' tokenizer")
    return loaded


def _usage(message: str):
    from carl.errors import CarlError

    return CarlError(message)
