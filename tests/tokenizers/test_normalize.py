"""Latent normalisation (:mod:`carl.tokenizers.normalize`): tokens of unit variance."""

import torch

from carl.data import ToyConfig, ToySequences
from carl.tokenizers.autoencoder import AutoencoderConfig, AutoencoderTokenizer
from carl.tokenizers.normalize import measure, normalize


def test_renormalize_gives_unit_variance_tokens():
    tok = AutoencoderTokenizer(AutoencoderConfig(shape=(8, 2), channels_last=True, widths=(8, 16), latent_channels=4))
    tok.latent_scale.fill_(5.0)
    tok.latent_shift.fill_(-2.0)
    data = ToySequences(ToyConfig(num_samples=512)).dataset()
    before, options = normalize(tok, data, samples=512)
    after = measure(tok, data, samples=512)
    assert options is None and before.std.min() > 3 and before.mean.min() > 5  # far from unit scale before
    assert after.mean.abs().max() < 0.05 and (after.std - 1).abs().max() < 0.05


def test_the_overall_spread_counts_the_spread_of_the_channel_means():
    """Two channels of unit spread around means 0 and 10: all values together spread sqrt(26)."""
    from carl.tokenizers.statistics import TokenStatistics

    stats = TokenStatistics(mean=torch.tensor([0.0, 10.0]), std=torch.tensor([1.0, 1.0]), count=100)
    assert abs(stats.overall_std - 26**0.5) < 1e-5
    values = torch.stack([torch.randn(200_000), 10 + torch.randn(200_000)], dim=1)  # (count, channel)
    assert abs(stats.overall_std - values.flatten().std().item()) < 0.01
    assert TokenStatistics(mean=torch.tensor([3.0, 3.0]), std=torch.tensor([2.0, 2.0]), count=1).overall_std == 2.0
