"""The image plugin's configs declare ranges, and image data is checked against the tokenizer
before training (one line naming both shapes instead of an IndexError inside a step)."""

import pytest

from carl.config import load_recipe
from carl.errors import RecipeError
from carl.errors import CarlError
from carl.ranges import unbounded_fields
from carl.api import train
from carl_image_ear.evaluate import FIDConfig
from carl_image_ear.images import ImageDataConfig
from carl_image_ear.kl16 import KL16Config

SMALL_KL16 = "model.tokenizer={name: kl16, image_size: 28, ch: 32, ch_mult: [1, 1], num_res_blocks: 1, attn_levels: []}"


@pytest.mark.parametrize("config", [KL16Config, ImageDataConfig, FIDConfig])
def test_every_numeric_field_declares_a_range(config):
    assert unbounded_fields(config) == []


@pytest.mark.parametrize("override, message", [
    ("data.image_size=0", r"^data\.image_size: 0 is out of range; allowed: >= 1$"),
    ("data.channels=2", r"^data\.channels: must be 1 \(grey\) or 3 \(RGB\), got 2$"),
    ("model.tokenizer={name: kl16, image_size: 100}", r"^model\.tokenizer\.image_size: 100 is not a multiple of the stride 16$"),
    ("model.tokenizer={name: kl16, attn_levels: [5]}", r"^model\.tokenizer\.attn_levels: \(5,\) names a level beyond"),
    ("model.tokenizer={name: kl16, ch: 8}", r"^model\.tokenizer\.ch: 8 times each of ch_mult .* must be a multiple of 32"),
    ("model.tokenizer={name: kl16, scale: 0}", r"^model\.tokenizer\.scale: 0\.0 is out of range; allowed: > 0$"),
])
def test_bad_values_fail_at_load(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("mnist-ear", [override])


@pytest.mark.parametrize("overrides, data_shape, tokenizer_shape", [
    (["data.image_size=16"], "(1, 16, 16)", "(1, 28, 28)"),
    ([SMALL_KL16], "(1, 28, 28)", "(3, 28, 28)"),  # grey digits into an RGB autoencoder
])
def test_images_that_do_not_fit_the_tokenizer_fail_before_training(tmp_path, overrides, data_shape, tokenizer_shape):
    cfg = load_recipe("mnist-ear", [*overrides, "train.max_steps=1", "train.tracker=none"])
    with pytest.raises(CarlError) as error:
        train(cfg, output=tmp_path, progress=False)
    message = str(error.value)
    assert message.startswith(f"data 'images' gives items of shape {data_shape} but tokenizer")
    assert f"takes {tokenizer_shape}" in message and "\n" not in message
