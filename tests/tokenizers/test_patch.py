import pytest
import torch

from carl.tokenizers import PatchTokenizer, PatchTokenizerConfig


def test_grid_round_trip_and_layout():
    tok = PatchTokenizer(PatchTokenizerConfig(shape=(3, 8, 12), patch=(4, 4), normalize=False))
    x = torch.randn(2, 3, 8, 12)
    tokens = tok.encode(x)
    assert tokens.shape == (2, tok.num_tokens, tok.token_dim) == (2, 6, 48)
    torch.testing.assert_close(tokens[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # raster order, channel-major patch
    torch.testing.assert_close(tok.decode(tokens), x)


def test_sequence_round_trip():
    tok = PatchTokenizer(PatchTokenizerConfig(shape=(12, 3), patch=(4,), normalize=False))
    x = torch.randn(5, 12, 3)
    tokens = tok.encode(x)
    assert tokens.shape == (5, 3, 12)
    torch.testing.assert_close(tokens[1, 2], x[1, 8:12].reshape(-1))
    torch.testing.assert_close(tok.decode(tokens), x)


def test_fit_normalises_per_channel_and_restores():
    tok = PatchTokenizer(PatchTokenizerConfig(shape=(2, 4, 4), patch=(2, 2)))
    x = torch.randn(64, 2, 4, 4) * torch.tensor([3.0, 0.5]).view(1, 2, 1, 1) + torch.tensor([5.0, -1.0]).view(1, 2, 1, 1)
    tok.fit(x)
    tokens = tok.encode(x)
    assert tokens.mean().abs() < 1e-4 and (tokens.std() - 1).abs() < 0.05
    torch.testing.assert_close(tok.decode(tokens), x, atol=1e-4, rtol=1e-4)
    clone = PatchTokenizer(tok.config)
    clone.load_state_dict(tok.state_dict())
    torch.testing.assert_close(clone.encode(x), tokens)


def test_bad_shapes():
    with pytest.raises(ValueError, match="does not divide"):
        PatchTokenizerConfig(shape=(1, 28, 28), patch=(5, 5))
    with pytest.raises(ValueError, match="takes a patch of 2 sizes"):
        PatchTokenizerConfig(shape=(1, 28, 28), patch=(4,))
