"""Generic tokenizers; modality tokenizers come from plugins."""

from carl.hookspecs import hookimpl
from carl.tokenizers.base import Tokenizer
from carl.tokenizers.autoencoder import AutoencoderConfig, AutoencoderTokenizer
from carl.tokenizers.patch import PatchTokenizer, PatchTokenizerConfig

__all__ = ["Tokenizer", "AutoencoderTokenizer", "AutoencoderConfig", "PatchTokenizer", "PatchTokenizerConfig"]


@hookimpl
def register_tokenizers(register):
    register("patch", PatchTokenizer)
    register("autoencoder", AutoencoderTokenizer)
