"""carl hook implementations of the image plugin (only hooks here; the code lives beside it)."""

from pathlib import Path

from carl.hookspecs import hookimpl


@hookimpl
def register_tokenizers(register):
    from carl_image_ear.kl16 import KL16Tokenizer

    register("kl16", KL16Tokenizer)


@hookimpl
def register_datasets(register):
    from carl_image_ear.images import ImageData

    register("images", ImageData)


@hookimpl
def register_recipes(register):
    register("image_ear", Path(__file__).parent / "recipes")
