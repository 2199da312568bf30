"""The autoencoder tokenizer, its training job, latent normalisation and tokenizer folders."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from carl.cli import app
from carl.config import TokenizerRecipeConfig, load_recipe
from carl.data import ToyConfig, ToySequences
from carl.model import load_model
from carl.hookspecs import hookimpl
from carl.errors import CarlError
from carl.plugins import load_plugins, pretrained_folders
from carl.tokenizers.autoencoder import AutoencoderConfig, AutoencoderTokenizer
from carl.tokenizers.normalize import measure, normalize
from carl.tokenizers.pretrained import load_tokenizer, save_tokenizer
from carl.api import train

FAST = ["train.max_steps=80", "train.checkpoint_every=40", "train.lr_schedule=constant"]


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    """The shipped tiny-ae recipe, trained briefly: a 1-D tokenizer folder."""
    out = tmp_path_factory.mktemp("tiny-ae")
    return train(load_recipe("tiny-ae", FAST), output=out, progress=False)


@pytest.mark.parametrize("shape, channels_last, grid", [
    ((3, 16), False, (4,)), ((16, 3), True, (4,)), ((2, 8, 12), False, (2, 3)), ((1, 8, 8, 4), False, (2, 2, 1)),
])
def test_grids_of_one_to_three_dimensions(shape, channels_last, grid):
    widths = (4, 8, 8) if len(grid) < 3 else (4, 8)
    if len(grid) == 3:
        grid = tuple(s // 2 for s in shape[1:])
    tok = AutoencoderTokenizer(AutoencoderConfig(shape=shape, channels_last=channels_last, widths=widths, latent_channels=3))
    x = torch.randn(5, *shape)
    tokens = tok.encode(x)
    assert tok.grid == grid and tokens.shape == (5, torch.Size(grid).numel(), 3) == (5, tok.num_tokens, tok.token_dim)
    assert tok.decode(tokens).shape == x.shape


def test_spatial_sides_must_divide_by_the_downsampling_factor():
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        AutoencoderTokenizer(AutoencoderConfig(shape=(1, 10, 12), widths=(4, 4, 4)))


def test_posterior_is_sampled_in_training_and_its_mean_in_eval():
    tok = AutoencoderTokenizer(AutoencoderConfig(shape=(1, 8, 8), widths=(4, 8)))
    x = torch.rand(2, 1, 8, 8)
    mean, _ = tok.posterior(x)
    assert torch.allclose(tok.eval().encode(x), tok._to_tokens(mean))
    assert not torch.allclose(tok.train().encode(x), tok.encode(x))


def test_renormalize_gives_unit_variance_tokens():
    tok = AutoencoderTokenizer(AutoencoderConfig(shape=(8, 2), channels_last=True, widths=(8, 16), latent_channels=4))
    tok.latent_scale.fill_(5.0)
    tok.latent_shift.fill_(-2.0)
    data = ToySequences(ToyConfig(num_samples=512)).dataset()
    before, options = normalize(tok, data, samples=512)
    after = measure(tok, data, samples=512)
    assert options is None and before.std.min() > 3 and before.mean.min() > 5  # far from unit scale before
    assert after.mean.abs().max() < 0.05 and (after.std - 1).abs().max() < 0.05


def test_tokenizer_training_reconstructs_and_writes_a_folder(tiny_ae):
    config = json.loads((tiny_ae / "config.json").read_text())
    assert config["tokenizer"] == "autoencoder" and config["token_shape"] == [4, 4] and "path" not in config["options"]
    assert {"model.safetensors", "README.md", "recipe.yaml"} <= {p.name for p in tiny_ae.iterdir()}
    card = (tiny_ae / "README.md").read_text()
    assert "held-out PSNR" in card and "library_name: carl" in card
    tok = load_tokenizer(tiny_ae)
    x = ToySequences(ToyConfig(num_samples=256, seed=1)).dataset()[:256]["data"]
    error = ((tok.decode(tok.encode(x)) - x) ** 2).mean()
    assert error < 0.2 * x.var()  # an untrained decoder gives ~x.var(); 80 steps explain over 80%
    tokens = tok.train().encode(x)
    assert abs(float(tokens.mean())) < 0.15 and abs(float(tokens.std()) - 1) < 0.15  # normalised at the end


def test_tokenizer_training_resumes_exactly(tiny_ae, tmp_path):
    cut = train(load_recipe("tiny-ae", FAST[1:] + ["train.max_steps=40"]), output=tmp_path, progress=False)
    resumed = train("tiny-ae", FAST, output=cut, resume=True, progress=False)  # the run's recipe, FAST on top
    a, b = load_file(tiny_ae / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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


def test_tokenizer_recipe_is_its_own_kind():
    cfg = load_recipe("tiny-ae")
    assert isinstance(cfg, TokenizerRecipeConfig) and cfg.tokenizer.options.channels_last


def test_untrainable_tokenizer_is_refused(tmp_path):
    recipe = load_recipe("tiny-ae", ["tokenizer={name: patch, shape: [8, 2], patch: [1]}"])
    with pytest.raises(CarlError, match="cannot be trained"):
        train(recipe, output=tmp_path, progress=False)


def test_scale_command_measures_and_writes(tiny_ae, tmp_path):
    folder = tmp_path / "ae"
    shutil.copytree(tiny_ae, folder, ignore=shutil.ignore_patterns("checkpoints"))
    tok = load_tokenizer(folder)
    tok.latent_scale.mul_(3.0)  # a tokenizer whose stored scale is off
    save_tokenizer(tok, "autoencoder", folder)
    args = ["tokenizer", "scale", "tiny", f"model.tokenizer={{name: autoencoder, path: {folder}}}", "--samples", "512"]
    result = CliRunner().invoke(app, args + ["--write"])
    assert result.exit_code == 0, result.output
    assert "std 3.0" in result.output or "std 2.9" in result.output, result.output
    fixed = load_tokenizer(folder)
    x = ToySequences(ToyConfig(num_samples=512)).dataset()[:512]["data"]
    assert abs(float(fixed.train().encode(x).std()) - 1) < 0.1


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
