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
