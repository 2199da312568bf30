"""`carl convert` at the official sizes, read from shapes alone (meta tensors, no memory), with
the settings from the checkpoint's args; and `carl convert kl16` of any KL-16 architecture."""

import argparse
import dataclasses
import re

import pytest
import torch
from safetensors.torch import load_file

from carl_image_ear.kl16 import KL16Config, KL16Tokenizer
from official_checkpoints import OFFICIAL, official_kl16_options, official_state, read_layout


def test_kl16_architecture_is_read_from_the_official_layout():
    """MAR's kl16.ckpt: AutoencoderKL(ch=128, ch_mult=(1, 1, 2, 2, 4), 2 res blocks, attention at 16 x 16, 16 channels)."""
    assert official_kl16_options() == {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_levels": [4], "z_channels": 16}


@pytest.mark.parametrize("name, layout, tensors, parameters", [
    ("ear_base", "ear_b_layout.txt", 352, 205_608_720), ("mar_base", "mar_b_layout.txt", 364, 207_924_768)])
def test_the_official_size_layouts_here_are_the_official_ones(name, layout, tensors, parameters):
    state, reference = official_state(name), read_layout(layout)
    assert {k: tuple(state[k].shape) for k in reference} == reference
    assert set(state) - set(reference) <= {k for k in state if re.search(r"(blocks|res_blocks)\.[1-9]\d*\.", k)}
    assert (len(state), sum(v.numel() for v in state.values())) == (tensors, parameters)


@pytest.mark.parametrize("name", OFFICIAL)
@pytest.mark.parametrize("with_model_name", [False, True], ids=["no-args", "args-model"])
def test_official_sizes_convert_to_the_papers_configs_with_the_official_defaults(name, with_model_name):
    from carl_image_ear.convert import ear_model_config, mar_model_config

    width, depth, encoder_depth, heads, head_depth, head_width = OFFICIAL[name]
    args = argparse.Namespace(model=name) if with_model_name else None
    ear = name.startswith("ear")
    c = (ear_model_config if ear else mar_model_config)(official_state(name), args, official_kl16_options())
    b, s = c.backbone, c.score.options
    assert (b.width, b.depth, b.encoder_depth, b.heads, b.mlp_ratio, b.dropout, b.attn_dropout) == (width, depth, encoder_depth, heads, 4.0, 0.1, 0.1)
    assert (s.depth, s.width) == (head_depth, head_width)
    assert (c.conditioner.options.num_classes, c.conditioner.options.buffer, c.conditioner.options.label_drop) == (1000, 64, 0.1)
    assert c.tokenizer.options == KL16Config(image_size=256) and c.order.options.mask_ratio_min == 0.7
    if ear:  # main_ear.py's defaults, with the README's --score_batch_mul 2
        assert (c.score.name, s.alpha, s.num_samples, s.batch_mul, s.train_temperature, s.noise_dim) == ("energy", 1.0, 2, 2, 1.0, 64)
        from carl.config import load_recipe

        shipped = load_recipe(f"ear-{name[4]}-in256").model  # the paper's recipe of the same model
        assert c == dataclasses.replace(shipped, tokenizer=dataclasses.replace(shipped.tokenizer, options=c.tokenizer.options))
    else:  # main_mar.py's 100 sampling steps, with the README's --diffusion_batch_mul 4
        assert (c.score.name, s.batch_mul, s.sample_steps) == ("diffusion", 4, 100)


@pytest.mark.parametrize("kind", ["ear", "mar"])
def test_args_that_name_another_size_than_the_weights_are_refused(kind):
    from carl.errors import WeightsError
    from carl_image_ear.convert import ear_model_config, mar_model_config

    make = ear_model_config if kind == "ear" else mar_model_config
    with pytest.raises(WeightsError, match=f"args name model '{kind}_large' \\(width 1024\\) but its weights have width 768"):
        make(official_state(f"{kind}_base"), argparse.Namespace(model=f"{kind}_large"), official_kl16_options())
    with pytest.raises(WeightsError, match=f"args name model '{kind}_xl', not an official size"):
        make(official_state(f"{kind}_base"), argparse.Namespace(model=f"{kind}_xl"), official_kl16_options())


def test_every_setting_comes_from_the_args():
    """A 512-pixel run with a buffer of 32 and every setting off its default: each one is taken from the args."""
    from carl_image_ear.convert import ear_model_config, mar_model_config

    common = dict(img_size=512, buffer_size=32, label_drop_prob=0.2, mask_ratio_min=0.5, proj_dropout=0.0, attn_dropout=0.05)
    positions = 32 + (512 // 16) ** 2
    ear = ear_model_config(official_state("ear_base", positions), argparse.Namespace(
        **common, alpha=1.5, score_batch_mul=4, train_temperature=0.99), official_kl16_options())
    mar = mar_model_config(official_state("mar_base", positions), argparse.Namespace(
        **common, diffusion_batch_mul=1, num_sampling_steps="250"), official_kl16_options())
    for c in (ear, mar):
        assert (c.tokenizer.options.image_size, c.conditioner.options.buffer, c.conditioner.options.label_drop) == (512, 32, 0.2)
        assert (c.order.options.mask_ratio_min, c.backbone.dropout, c.backbone.attn_dropout) == (0.5, 0.0, 0.05)
    assert (ear.score.options.alpha, ear.score.options.batch_mul, ear.score.options.train_temperature) == (1.5, 4, 0.99)
    assert (mar.score.options.batch_mul, mar.score.options.sample_steps) == (1, 250)


# ---------------------------------------------------------------------------------------------
# `carl convert kl16`


KL16_SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), z_channels=4)


def test_kl16_converts_any_architecture_into_a_folder_it_creates_or_reuses(tmp_path):
    from carl_image_ear.convert import convert_kl16

    state = KL16Tokenizer(KL16Config(image_size=32, **KL16_SMALL)).state_dict()
    torch.save({"model": state}, tmp_path / "kl16.ckpt")
    written = convert_kl16(str(tmp_path), tmp_path / "new" / "vae")  # a folder holding kl16.ckpt; parents created
    assert written == tmp_path / "new" / "vae" / "kl16.safetensors"
    converted = load_file(written)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], v) for k, v in state.items())
    assert convert_kl16(str(tmp_path / "kl16.ckpt"), tmp_path / "new" / "vae") == written  # again, into the same folder


def test_kl16_that_does_not_fit_its_own_shapes_is_refused_naming_file_key_and_shapes(tmp_path):
    from carl.errors import WeightsError
    from carl_image_ear.convert import convert_kl16

    state = KL16Tokenizer(KL16Config(image_size=32, **KL16_SMALL)).state_dict()
    state["post_quant_conv.weight"] = torch.zeros(4, 8, 1, 1)  # 4 latent channels elsewhere
    torch.save({"model": state}, tmp_path / "bad.ckpt")
    with pytest.raises(WeightsError) as err:
        convert_kl16(str(tmp_path / "bad.ckpt"), tmp_path / "out")
    assert str(err.value) == f"{tmp_path / 'bad.ckpt'} does not fit KL16Tokenizer: 1 shape: post_quant_conv.weight (4, 8, 1, 1) != (4, 4, 1, 1)"


def test_kl16_with_a_level_narrower_than_its_input_width_is_refused_as_a_config_error(tmp_path):
    """Its widths give ch_mult 0 for that level: the KL-16 config refuses it before any weights are compared."""
    from carl.errors import FieldError
    from carl_image_ear.convert import convert_kl16

    state = KL16Tokenizer(KL16Config(image_size=32, **KL16_SMALL)).state_dict()
    state["encoder.down.1.block.0.conv1.weight"] = torch.zeros(16, 32, 3, 3)  # 16 < ch = 32 channels
    torch.save({"model": state}, tmp_path / "narrow.ckpt")
    with pytest.raises(FieldError, match=r"^ch_mult\[1\] 0 is out of range; allowed: >= 1$"):
        convert_kl16(str(tmp_path / "narrow.ckpt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
