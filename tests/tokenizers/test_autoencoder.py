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


def test_cached_tokens_are_drawn_from_the_posterior_with_its_standard_deviation():
    tok = AutoencoderTokenizer(AutoencoderConfig(shape=(1, 8, 8), widths=(4, 8), latent_channels=2)).eval()
    mean = torch.randn(1, 2, *tok.grid).expand(4000, -1, -1, -1)
    log_var = torch.tensor([-3.0, 1.0]).view(1, 2, 1, 1).expand_as(mean)  # std exp(-1.5) and exp(0.5)
    batch = {"moments": torch.cat([mean, log_var], dim=1)}
    tokens = tok.from_cache(batch, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, tok.from_cache(batch, torch.Generator().manual_seed(0)))  # the generator's draw
    latents = tok._from_tokens(tokens)  # back to latent units: (4000, 2, H, W)
    torch.testing.assert_close(latents.mean(0), mean[0], atol=0.1, rtol=0)
    expected_std = torch.exp(0.5 * log_var[0])
    torch.testing.assert_close(latents.std(0), expected_std, rtol=0.05, atol=0)
