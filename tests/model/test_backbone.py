"""The transformer against a reference written out by hand, and its incremental decoding: the KV
cache gives the hidden states of a full pass."""

import math

import pytest
import torch

from carl.model.backbone import Attention, Backbone, KVCache
from carl.config import BackboneConfig
from carl.model import ContinuousAR

from helpers import tiny_model_config


def backbone(*, mask_token: bool = False, query_next: bool = False, **options) -> Backbone:
    torch.manual_seed(0)
    config = BackboneConfig(**{"width": 16, "depth": 2, "heads": 2, "dropout": 0.0, "attn_dropout": 0.0, **options})
    return Backbone(config, token_dim=2, buffer=2, seq_len=8, mask_token=mask_token, query_next=query_next).eval()


def randomized(bb: Backbone) -> Backbone:
    """In float64 and away from the initial values (unit norms, zero biases), so every parameter counts."""
    bb = bb.double()
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return bb


# A reference pre-norm transformer (timm's ViT block, as in MAR and EAR), written out by hand.


def layer_norm(norm, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias  # timm's eps


def linear(layer, x):
    return x @ layer.weight.T + layer.bias


def attention(attn, x, allowed):
    """``allowed (L, L)``: query i may attend to key j."""
    b, length, width = x.shape
    heads, dim = attn.heads, width // attn.heads
    q, k, v = (t.reshape(b, length, heads, dim).transpose(1, 2) for t in linear(attn.qkv, x).split(width, dim=-1))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~allowed, -math.inf)
    return linear(attn.proj, (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, width))


def mlp(layers, x):
    hidden = linear(layers.fc1, x)
    return linear(layers.fc2, 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))))  # exact GELU


def blocks_reference(blocks, x, allowed):
    for block in blocks:
        x = x + attention(block.attn, layer_norm(block.norm1, x), allowed)
        x = x + mlp(block.mlp, layer_norm(block.norm2, x))
    return x


def reference(bb: Backbone, x, allowed):
    return layer_norm(bb.norm, blocks_reference(bb.blocks, x, allowed))


@pytest.mark.parametrize("width,heads", [(16, 2), (4, 4)])  # (4, 4): one dimension per head
@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_matches_the_reference_transformer(width, heads, length, causal):
    bb = randomized(backbone(width=width, heads=heads))
    x = torch.randn(2, length, width, dtype=torch.float64)
    allowed = torch.ones(length, length, dtype=torch.bool)
    allowed = allowed.tril() if causal else allowed
    torch.testing.assert_close(bb(x, causal=causal), reference(bb, x, allowed), rtol=0, atol=1e-10)


def test_encoder_matches_the_reference_bidirectional_transformer():
    bb = randomized(backbone(mask_token=True, encoder_depth=2))
    assert len(bb.encoder_blocks) == 2
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    allowed = torch.ones(6, 6, dtype=torch.bool)
    expected = layer_norm(bb.encoder_norm, blocks_reference(bb.encoder_blocks, layer_norm(bb.token_norm, x), allowed))
    torch.testing.assert_close(bb.encode(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunks", [(10,), (3, 4, 1, 2), (1, 1, 5, 3)])
def test_cached_chunks_match_the_reference(chunks, causal, static):
    """Each chunk attends to the cache and to its own tokens (only those up to itself if ``causal``)."""
    bb = randomized(backbone())
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    position, chunk = torch.arange(10), torch.arange(len(chunks)).repeat_interleave(torch.tensor(chunks))
    allowed = position[:, None] >= position if causal else chunk[:, None] >= chunk
    cache = bb.new_cache(2, like=x, static=static)
    hidden = torch.cat([bb(part, causal=causal, cache=cache) for part in x.split(chunks, dim=1)], dim=1)
    torch.testing.assert_close(hidden, reference(bb, x, allowed), rtol=0, atol=1e-10)


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


@pytest.mark.parametrize("static", [False, True])
def test_cached_decoding_ignores_the_default_device(static):
    """Masks and indices are made on the inputs' device, whatever torch's default device is."""
    bb = backbone()
    x = torch.randn(2, 10, 16)

    def decode():
        cache = bb.new_cache(2, like=x, static=static)
        return torch.cat([bb(part, causal=True, cache=cache) for part in x.split((3, 4, 1, 2), dim=1)], dim=1)

    expected = decode()
    with torch.device("meta"):  # a tensor made on the default device would be a meta tensor
        hidden = decode()
    assert hidden.device.type == "cpu"
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)


@pytest.mark.parametrize("make", ["KVCache", "Backbone.new_cache"])
def test_a_cache_grows_unless_static(make):
    bb, like = backbone(), torch.zeros(1)

    def new(**static):
        if make == "KVCache":
            return KVCache(depth=2, batch=2, heads=2, head_dim=8, max_len=10, like=like, **static)
        return bb.new_cache(2, like=like, **static)

    growing, static = new(), new(static=True)
    k = torch.randn(2, 2, 3, 8)
    assert growing.append(0, k, k)[0].shape == (2, 2, 3, 8)  # the filled part only
    assert static.append(0, k, k)[0].shape == (2, 2, 10, 8)  # the whole buffer, under a mask
    growing.advance()
    static.advance()
    assert type(growing.length) is int and growing.length == 3  # a host counter: slicing reads no device value
    assert static.length.item() == 3


@pytest.mark.parametrize("static", [False, True])
def test_a_cache_commits_only_appended_positions(static):
    cache = KVCache(depth=1, batch=1, heads=1, head_dim=4, max_len=6, like=torch.zeros(1), static=static)
    cache.advance()
    assert int(cache.length) == 0
    k = torch.randn(1, 1, 2, 4)
    cache.append(0, k, k)
    cache.advance()
    assert int(cache.length) == 2


@pytest.mark.parametrize("part", ["block", "attention"])
def test_a_lone_layer_caches_in_layer_zero(part):
    bb = backbone()
    layer = bb.blocks[0] if part == "block" else bb.blocks[0].attn
    x = torch.randn(2, 5, 16)
    cache = KVCache(depth=1, batch=2, heads=2, head_dim=8, max_len=5, like=x)
    hidden = []
    for chunk in x.split((2, 3), dim=1):
        hidden.append(layer(chunk, True, cache))
        cache.advance()
    torch.testing.assert_close(torch.cat(hidden, dim=1), layer(x, True), rtol=1e-5, atol=1e-5)


def test_attention_dropout_applies_in_training_only():
    bb = backbone(mask_token=True, encoder_depth=1, attn_dropout=0.5)
    x = torch.randn(2, 6, 16)
    attentions = [m for m in bb.modules() if isinstance(m, Attention)]
    assert len(attentions) == 3  # the encoder's too
    for attn in attentions:
        attn.eval()
        plain = attn(x, causal=False)
        torch.testing.assert_close(attn(x, causal=False), plain, rtol=0, atol=0)
        attn.train()
        first, second = attn(x, causal=False), attn(x, causal=False)
        assert not torch.allclose(first, plain) and not torch.allclose(first, second)


def test_attention_needs_heads_that_divide_the_width():
    with pytest.raises(ValueError, match="width 10 is not divisible by heads 4"):
        Attention(10, 4, attn_dropout=0.0, dropout=0.0)


def test_the_encoder_decoder_needs_a_masked_order():
    with pytest.raises(ValueError, match=r"^backbone\.encoder_depth .*MAR.* needs a bidirectional \(masked\) order$"):
        backbone(encoder_depth=1)


@pytest.mark.parametrize("mask_token,query_next", [(False, False), (True, False), (False, True)])
def test_a_backbone_holds_only_the_embeddings_its_order_uses(mask_token, query_next):
    bb = backbone(mask_token=mask_token, query_next=query_next)
    assert (bb.mask_token is not None) == mask_token
    assert (bb.query_embed is not None) == query_next


def test_parameters_have_the_shapes_of_mar_checkpoints():
    """The layout of MAR's and EAR's checkpoints, which carl-image-ear converts."""
    bb = backbone(mask_token=True, query_next=True, encoder_depth=1, mlp_ratio=2.0)
    assert bb.pos_embed.shape == bb.encoder_pos_embed.shape == (1, 2 + 8, 16)  # buffer + seq_len positions
    assert bb.query_embed.shape == bb.head_pos_embed.shape == (1, 8, 16)
    assert bb.mask_token.shape == (1, 1, 16)
    for block in [*bb.blocks, *bb.encoder_blocks]:
        assert block.mlp.fc1.weight.shape == (2 * 16, 16)  # mlp_ratio * width hidden units


def test_no_weight_decay_names_the_learned_embeddings():
    bb = backbone(mask_token=True, query_next=True, encoder_depth=1)
    own = {name for name, _ in bb.named_parameters(recurse=False)}  # the rest live in Linear and LayerNorm
    assert own == bb.no_weight_decay()


def test_learned_embeddings_start_as_small_gaussians():
    torch.manual_seed(0)
    config = BackboneConfig(width=32, depth=1, heads=2, encoder_depth=1)
    bb = Backbone(config, token_dim=2, buffer=4, seq_len=60, mask_token=True, query_next=True)
    embeddings = dict(bb.named_parameters(recurse=False))
    assert len(embeddings) == 5 and all((e != 0).all() for e in embeddings.values())
    pooled = torch.cat([e.detach().flatten() for e in embeddings.values()])  # about 8000 draws of N(0, 0.02^2)
    assert pooled.mean().item() == pytest.approx(0.0, abs=0.002)
    assert pooled.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("order", ["causal", "random", "masked"])
def test_every_parameter_gets_a_gradient(order):
    """No parameter sits outside the loss (DDP refuses unused parameters)."""
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order))
    model.loss({"tokens": torch.randn(4, 8, 2), "condition": torch.tensor([0, 1, 2, 3])}).backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
