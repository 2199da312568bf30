"""The transformer's incremental decoding: the KV cache gives the hidden states of a full pass."""

import pytest
import torch

from carl.backbone import Backbone
from carl.config import BackboneConfig


def backbone() -> Backbone:
    torch.manual_seed(0)
    config = BackboneConfig(width=16, depth=2, heads=2, dropout=0.0, attn_dropout=0.0)
    return Backbone(config, token_dim=2, buffer=2, seq_len=8, mask_token=False, query_next=False).eval()


@pytest.mark.parametrize("chunks", [(3, 1, 1, 1, 1, 1, 1, 1), (2, 3, 4, 1), (1, 4, 5), (10,)])
def test_cached_chunks_match_one_causal_pass(chunks):
    bb = backbone()
    x = torch.randn(3, 10, 16)
    full = bb(x, causal=True)
    cache, start, parts = bb.new_cache(3, like=x), 0, []
    for size in chunks:  # chunks of several tokens after the first use the cached causal mask
        parts.append(bb(x[:, start : start + size], causal=True, cache=cache))
        start += size
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cached_chunk_does_not_see_later_tokens():
    bb = backbone()
    x = torch.randn(1, 7, 16)
    cache = bb.new_cache(1, like=x)
    bb(x[:, :3], causal=True, cache=cache)
    first = bb(x[:, 3:7], causal=True, cache=cache)[:, 0]
    changed = x.clone()
    changed[:, 4:] += 3.0  # the chunk's later tokens change; its first query must not notice
    cache = bb.new_cache(1, like=x)
    bb(changed[:, :3], causal=True, cache=cache)
    torch.testing.assert_close(bb(changed[:, 3:7], causal=True, cache=cache)[:, 0], first)


@pytest.mark.parametrize("chunks", [(3, 1, 1, 1, 1, 1, 1, 1), (2, 3, 4, 1)])
def test_static_cache_matches_growing_cache(chunks):
    bb = backbone()
    x = torch.randn(3, 10, 16)
    growing, static = bb.new_cache(3, like=x), bb.new_cache(3, like=x, static=True)
    start = 0
    for size in chunks:
        step = x[:, start : start + size]
        torch.testing.assert_close(bb(step, causal=True, cache=static), bb(step, causal=True, cache=growing),
                                   rtol=1e-5, atol=1e-5)
        start += size
    assert static.length.item() == growing.length == 10  # a device tensor, advanced in place


def test_static_cache_keeps_shapes_and_addresses():
    """What graph capture needs: one-token steps read the same buffers with the same shapes."""
    bb = backbone()
    x = torch.randn(2, 10, 16)
    cache = bb.new_cache(2, like=x, static=True)
    length = cache.length
    bb(x[:, :3], causal=True, cache=cache)
    seen = []
    for t in range(3, 10):
        q = torch.randn(2, 2, 1, 8)
        k, v = cache.append(0, q, q)
        mask, is_causal = cache.mask(1, True, x.device)
        seen.append((k.shape, k.data_ptr(), mask.shape, is_causal, int(mask.sum())))
        cache.advance()
    assert {s[:4] for s in seen} == {(torch.Size([2, 2, 10, 8]), cache.keys.data_ptr(), torch.Size([1, 10]), False)}
    assert [s[4] for s in seen] == list(range(4, 11))  # each step sees one more position
    assert cache.length is length  # updated in place, never rebound
