"""Latent normalisation (:mod:`carl.tokenizers.normalize`): tokens of unit variance."""

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
