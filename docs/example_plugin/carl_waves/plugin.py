"""carl hooks of the waves plugin: only hooks here; each imports its code when called."""

from pathlib import Path

from carl.hookspecs import hookimpl


@hookimpl
def register_tokenizers(register):
    from carl_waves.tokenizer import WaveTokenizer

    register("waves", WaveTokenizer)


@hookimpl
def register_datasets(register):
    from carl_waves.data import SineWaves

    register("sines", SineWaves)


@hookimpl
def register_metrics(register):
    from carl_waves.metrics import FrequencyAccuracy

    register("frequency", FrequencyAccuracy)


@hookimpl
def register_recipes(register):
    register("waves", Path(__file__).parent / "recipes")


@hookimpl
def register_pretrained(register):
    for folder in sorted((Path(__file__).parent / "pretrained").glob("*/config.json")):
        register(folder.parent.name, folder.parent)  # a tokenizer folder shipped in the package, by its name


@hookimpl
def register_commands(app):
    from carl_waves.commands import check

    app.command("waves-check")(check)
