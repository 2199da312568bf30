"""carl hook implementations of the time-series plugin (only hooks; the code lives beside it)."""

from pathlib import Path

from carl.hookspecs import hookimpl


@hookimpl
def register_tokenizers(register):
    from carl_timeseries.tokenizer import SeriesTokenizer

    register("series", SeriesTokenizer)


@hookimpl
def register_datasets(register):
    from carl_timeseries.data import MacroSeries

    register("macro", MacroSeries)


@hookimpl
def register_recipes(register):
    register("timeseries", Path(__file__).parent / "recipes")


@hookimpl
def register_commands(app):
    from typing import Annotated, Optional

    import typer

    @app.command("forecast")
    def forecast(
        run: Annotated[str, typer.Argument(help="A time-series model folder (a training output) or a Hub repo id.")],
        origin: Annotated[Optional[str], typer.Option("--origin", help="The first step forecast: 2004Q1, 2004-01-01 (default: the step after the last date).")] = None,
        paths: Annotated[int, typer.Option("--paths", min=1, help="Sample paths to draw.")] = 200,
        out: Annotated[Path, typer.Option("--out", help="The fan chart: .png, .svg or .pdf.")] = Path("forecast.png"),
        samples: Annotated[Optional[Path], typer.Option("--samples", help="The sample paths: .csv or .parquet (default: --out as .csv).")] = None,
        csv: Annotated[Optional[Path], typer.Option("--csv", help="Your own series: a CSV with a date column and the model's channels as columns.")] = None,
        date_column: Annotated[str, typer.Option("--date-column", help="The date column of --csv.")] = "date",
        baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also score last value, seasonal naive, ETS and ARIMA.")] = True,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler and of the baselines' simulations.")] = 0,
    ) -> None:
        """Forecast from a date: sample paths (CSV), a fan chart, and scores against the truth where known."""
        from carl_timeseries.commands import run_forecast

        report = run_forecast(run, origin=origin, num_paths=paths, out=out, samples=samples, csv=csv,
                              date_column=date_column, baselines=baselines, seed=seed)
        for line in report.lines(run):
            typer.echo(line)
