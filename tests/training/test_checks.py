"""The data is checked against the tokenizer before the first step: one line naming both shapes."""

import re

import pytest
import torch

from carl.training.checks import check_data_fits
from carl.config import load_recipe
from carl.data import ToyConfig, ToySequences
from carl.errors import CarlError
from carl.tokenizers.patch import PatchTokenizer, PatchTokenizerConfig
from carl.api import train
from carl.layout import CHECKPOINTS


@pytest.mark.parametrize("shape", ["[4,2]", "[8,3]", "[16,2]"])
def test_training_refuses_items_of_another_shape_before_any_step(tmp_path, shape):
    cfg = load_recipe("tiny", [f"model.tokenizer.shape={shape}"])
    expected = tuple(int(v) for v in shape.strip("[]").split(","))
    with pytest.raises(CarlError, match=rf"^data 'toy' gives items of shape \(8, 2\) but tokenizer 'patch' takes {re.escape(str(expected))}"):
        train(cfg, output=tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINTS).exists() and not (tmp_path / "model.safetensors").exists()


def toy():
    source = ToySequences(ToyConfig(num_samples=8))
    return source, source.dataset()


def patch():
    return PatchTokenizer(PatchTokenizerConfig(shape=(8, 2), patch=(1,), normalize=False))


def test_a_fitting_tokenizer_passes():
    source, dataset = toy()
    check_data_fits(source, dataset, patch(), data="toy", tokenizer_name="patch")


def test_a_tokenizer_without_input_shape_is_checked_by_encoding_a_probe_batch():
    source, dataset = toy()

    class Shrinks(PatchTokenizer):  # declares 8 tokens, makes 4: no input_shape to catch it
        input_shape = None

        def encode(self, x):
            return super().encode(x)[:, :4]

    with pytest.raises(CarlError, match=r"encodes items of data 'toy' \(shape \(8, 2\)\) into \(4, 2\) tokens, but it declares \(8, 2\)"):
        check_data_fits(source, dataset, Shrinks(patch().config), data="toy", tokenizer_name="shrinks")

    class Breaks(PatchTokenizer):
        input_shape = None

        def encode(self, x):
            raise IndexError("index 9 is out of bounds")

    with pytest.raises(CarlError, match=r"^tokenizer 'breaks' cannot encode data 'toy' \(items of shape \(8, 2\)\): IndexError: index 9"):
        check_data_fits(source, dataset, Breaks(patch().config), data="toy", tokenizer_name="breaks")


def test_the_data_source_has_its_say():
    source, dataset = toy()

    class Picky(ToySequences):
        def check_tokenizer(self, tokenizer):
            raise ValueError("data.context is 20 but the tokenizer's context is 24")

    with pytest.raises(CarlError, match="^data 'toy' does not fit tokenizer 'patch': data.context is 20 but"):
        check_data_fits(Picky(source.config), dataset, patch(), data="toy", tokenizer_name="patch")


def test_the_probe_leaves_the_random_stream_alone():
    source, dataset = toy()

    class Samples(PatchTokenizer):
        def encode(self, x):
            return super().encode(x) + torch.randn(())  # a sampling tokenizer (a VAE posterior, say)

    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_data_fits(source, dataset, Samples(patch().config), data="toy", tokenizer_name="samples")
    assert torch.equal(torch.rand(3), expected)
