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
    from carl_timeseries.pretrain import PretrainWindows
    from carl_timeseries.tables import SeriesTables

    register("macro", MacroSeries)
    register("pretrain", PretrainWindows)
    register("tables", SeriesTables)


@hookimpl
def register_recipes(register):
    register("timeseries", Path(__file__).parent / "recipes")


@hookimpl
def register_pretrained(register):
    for folder in sorted((Path(__file__).parent / "pretrained").glob("*/config.json")):
        register(folder.parent.name, folder.parent)  # carl-forecaster: made by the ts-forecaster recipe


@hookimpl
def register_commands(app):
    from carl_timeseries.cli import add_commands

    add_commands(app)
