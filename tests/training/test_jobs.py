"""What is trained (:mod:`carl.training.jobs`): the tokenizer job reconstructs, writes a tokenizer
folder, resumes exactly, and refuses a tokenizer it cannot train."""

import json

import pytest
import torch
from safetensors.torch import load_file

from carl.api import train
from carl.config import load_recipe
from carl.data import ToyConfig, ToySequences
from carl.errors import CarlError
from carl.tokenizers.pretrained import load_tokenizer

from helpers import FAST_AE


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
    cut = train(load_recipe("tiny-ae", FAST_AE[1:] + ["train.max_steps=40"]), output=tmp_path, progress=False)
    resumed = train("tiny-ae", FAST_AE, output=cut, resume=True, progress=False)  # the run's recipe, FAST_AE on top
    a, b = load_file(tiny_ae / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_untrainable_tokenizer_is_refused(tmp_path):
    recipe = load_recipe("tiny-ae", ["tokenizer={name: patch, shape: [8, 2], patch: [1]}"])
    with pytest.raises(CarlError, match="cannot be trained"):
        train(recipe, output=tmp_path, progress=False)
