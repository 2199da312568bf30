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


def test_the_tokenizer_objective_is_the_reconstruction_plus_the_kl_of_torch_distributions():
    """The KL term against torch.distributions (its sign and scale) and the posterior draw's spread
    (exp(0.5 log_var), the reparameterisation)."""
    from torch.distributions import Normal, kl_divergence

    from carl.config import ReconstructionConfig
    from carl.tokenizers.autoencoder import AutoencoderConfig, AutoencoderTokenizer
    from carl.training.jobs.tokenizer import AutoencoderObjective, kl_divergence as carl_kl

    mean, log_var = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    expected = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).flatten(1).mean(1)
    torch.testing.assert_close(carl_kl(mean, log_var), expected)
    assert (carl_kl(mean, log_var) >= 0).all() and carl_kl(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0

    torch.manual_seed(0)
    tokenizer = AutoencoderTokenizer(AutoencoderConfig(shape=(8, 2), channels_last=True, widths=(8, 8), blocks=1,
                                                       latent_channels=2))
    objective = AutoencoderObjective(tokenizer, ReconstructionConfig(kl_weight=0.5)).train()
    fixed_mean, fixed_log_var = torch.zeros(4000, 2, 4), torch.full((4000, 2, 4), 2 * torch.tensor(0.3).log().item())
    drawn = []
    tokenizer.posterior = lambda x: (fixed_mean, fixed_log_var)
    tokenizer.decode_latents = lambda z: drawn.append(z) or torch.zeros(len(z), 8, 2)
    objective.terms(torch.zeros(4000, 8, 2))
    assert abs(drawn[0].std().item() - 0.3) < 0.01 and abs(drawn[0].mean().item()) < 0.01  # N(mean, exp(0.5 log_var))
    loss = objective({"data": torch.zeros(4000, 8, 2)})  # a linear output of 0 for data 0: no reconstruction error
    torch.testing.assert_close(loss, 0.5 * carl_kl(fixed_mean, fixed_log_var).mean())
