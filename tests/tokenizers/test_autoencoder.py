"""The autoencoder tokenizer (:mod:`carl.tokenizers.autoencoder`): grids of one to three dimensions
and its posterior."""

import pytest
import torch

from carl.tokenizers.autoencoder import AutoencoderConfig, AutoencoderTokenizer


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
