"""Tokenizer folders (:mod:`carl.tokenizers.pretrained`): read from the Hub cache offline, named by
a plugin, checked against the recipe, and copied into the model folder of an AR model."""

import shutil

import pytest
import torch

from carl.api import train
from carl.config import load_recipe
from carl.hookspecs import hookimpl
from carl.model import load_model
from carl.plugins import load_plugins, pretrained_folders
from carl.tokenizers.pretrained import load_tokenizer


def test_folder_loads_from_the_hub_cache_offline(tiny_ae, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    snapshot = tmp_path / "models--me--tiny-ae" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_ae, snapshot, ignore=shutil.ignore_patterns("checkpoints", "samples"))
    (tmp_path / "models--me--tiny-ae" / "refs").mkdir()
    (tmp_path / "models--me--tiny-ae" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_hub, local = load_tokenizer("me/tiny-ae"), load_tokenizer(tiny_ae)
    x = torch.randn(3, 8, 2)
    assert torch.equal(from_hub.encode(x), local.encode(x))


def test_recipe_disagreeing_with_the_folder_names_both_token_shapes(tiny_ae):
    with pytest.raises(Exception, match=r"tokens 4 x 8.*tokens 4 x 4"):
        load_recipe("tiny", [f"model.tokenizer={{name: autoencoder, path: {tiny_ae}, latent_channels: 8}}"])


def test_ar_model_on_a_tokenizer_folder_generates_data(tiny_ae, tmp_path):
    recipe = load_recipe("tiny", [f"model.tokenizer={{name: autoencoder, path: {tiny_ae}}}", "train.max_steps=4",
                                  "train.checkpoint_every=null"])
    out = train(recipe, output=tmp_path / "ar", progress=False)
    shutil.rmtree(tiny_ae / "checkpoints", ignore_errors=True)
    moved = tiny_ae.with_name(tiny_ae.name + "-moved")  # the model folder needs the tokenizer folder no more
    tiny_ae.rename(moved)
    try:
        model, _ = load_model(out)
        data = model.generate(torch.arange(4), num_steps=4, generator=torch.Generator().manual_seed(0))
        tokenizer = load_tokenizer(moved)
        assert data.shape == (4, 8, 2)  # decoded sequences, not latents (4 tokens x 4)
        assert torch.equal(model.tokenizer.latent_scale, tokenizer.latent_scale)
        assert all(torch.equal(v, tokenizer.state_dict()[k]) for k, v in model.tokenizer.state_dict().items())
    finally:
        moved.rename(tiny_ae)


class ShipsATokenizer:
    """A plugin that ships a tokenizer folder under a name."""

    folder = None

    @staticmethod
    @hookimpl
    def register_pretrained(register):
        register("shipped-tiny-ae", ShipsATokenizer.folder)


def test_shipped_name_resolves_through_register_pretrained(tiny_ae, monkeypatch):
    import carl.plugins as plugins

    ShipsATokenizer.folder = tiny_ae
    original = plugins._load_entry_points

    def with_plugin(pm, infos):
        original(pm, infos)
        pm.register(ShipsATokenizer, name="ships")
        infos["ships"] = plugins.PluginInfo("ships", "0", "tests")

    monkeypatch.setattr(plugins, "_load_entry_points", with_plugin)
    load_plugins(force=True)
    try:
        assert pretrained_folders()["shipped-tiny-ae"] == tiny_ae
        x = torch.randn(2, 8, 2)
        assert torch.equal(load_tokenizer("shipped-tiny-ae").encode(x), load_tokenizer(tiny_ae).encode(x))
        cfg = load_recipe("tiny", ["model.tokenizer={name: autoencoder, path: shipped-tiny-ae}"])
        assert cfg.model.tokenizer.options.path == "shipped-tiny-ae"
    finally:
        monkeypatch.undo()
        load_plugins(force=True)
