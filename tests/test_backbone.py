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
