"""KL-16: the official layout, numerical parity with an independent reading of the
architecture, strict loading from every kind of reference, chunked decoding, the cache interface."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import reference_kl16 as ref
from carl.weights import WeightsError
from carl_image_ear.kl16 import KL16Config, KL16Tokenizer

DATA = Path(__file__).parent / "data"
SMALL = dict(image_size=32, ch=32, ch_mult=(1, 2, 2), attn_levels=(2,), z_channels=4, decode_chunk=3)


def official_layout() -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in (DATA / "kl16_vae_layout.txt").read_text().splitlines():
        if match := re.match(r"(\S+) \(([\d, ]*)\)", line):
            layout[match[1]] = tuple(int(x) for x in match[2].split(",") if x.strip())
    return layout


def randomized(tokenizer: KL16Tokenizer, seed: int = 0) -> KL16Tokenizer:
    """Random weights everywhere (norm affines included), so that no layer is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tokenizer.named_parameters():
            scale = 0.3 if name.endswith("bias") or "norm" in name else (3.0 / p[0].numel()) ** 0.5
            p.copy_(scale * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return tokenizer.eval()


def test_layout_is_the_official_one():
    state = KL16Tokenizer(KL16Config()).state_dict()
    layout = official_layout()
    assert {k: tuple(v.shape) for k, v in state.items()} == layout
    assert sum(v.numel() for v in state.values()) == 66_456_019


def test_parity_with_the_reference_architecture_at_256_pixels():
    tokenizer = randomized(KL16Tokenizer(KL16Config(decode_chunk=2)))
    sd = tokenizer.state_dict()
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean, log_var = ref.encode(sd, images * 2 - 1)
        moments = tokenizer.moments(images)
        torch.testing.assert_close(moments, torch.cat([mean, log_var], 1), atol=1e-4, rtol=0)
        assert moments.shape == (1, 32, 16, 16)
        latent = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
        expected = (ref.decode(sd, latent) + 1) / 2
        tokens = tokenizer.tokens_from_moments(torch.cat([latent, torch.zeros_like(latent)], 1), sample=False)
        assert tokens.shape == (1, 256, 16)
        torch.testing.assert_close(tokenizer.decode(tokens), expected, atol=1e-4, rtol=0)


def test_scale_factor_and_posterior():
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL)))
    moments = tokenizer.moments(torch.rand(2, 3, 32, 32))
    mean = moments[:, :4]
    torch.testing.assert_close(tokenizer.tokens_from_moments(moments, sample=False), 0.2325 * mean.flatten(2).transpose(1, 2))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([tokenizer.tokens_from_moments(moments, sample=True, generator=g) for _ in range(2)])
    assert not torch.allclose(draws[0], draws[1])  # sampled, not the mean
    tokenizer.train()
    assert not torch.equal(tokenizer.encode(torch.rand(1, 3, 32, 32)), tokenizer.encode(torch.rand(1, 3, 32, 32)))


def test_decodes_batches_larger_than_the_chunk_like_one_by_one():
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL)))
    tokens = torch.randn(7, tokenizer.num_tokens, 4)  # 7 > decode_chunk 3
    whole = tokenizer.decode(tokens)
    single = torch.cat([tokenizer.decode(t[None]) for t in tokens])
    assert whole.shape == (7, 3, 32, 32)
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=0)


def test_cache_keeps_image_and_mirror_and_picks_one_per_sample():
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL, sample_posterior=False)))
    images = torch.rand(16, 3, 32, 32)
    row = tokenizer.cache(images)
    torch.testing.assert_close(row["moments_flip"], tokenizer.moments(images.flip(-1)))
    tokens = tokenizer.from_cache(row, generator=torch.Generator().manual_seed(0))
    plain = tokenizer.tokens_from_moments(row["moments"], sample=False)
    mirrored = tokenizer.tokens_from_moments(row["moments_flip"], sample=False)
    is_plain = (tokens - plain).abs().amax((1, 2)) < 1e-6
    is_mirror = (tokens - mirrored).abs().amax((1, 2)) < 1e-6
    assert (is_plain | is_mirror).all() and is_plain.any() and is_mirror.any()


@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_loads_mar_checkpoints_and_safetensors(tmp_path, kind):
    source = randomized(KL16Tokenizer(KL16Config(**SMALL)), seed=3)
    state = source.state_dict()
    if kind == "ckpt":
        path = tmp_path / "kl16.ckpt"
        torch.save({"model": state, "epoch": 3}, path)
    else:
        path = tmp_path / "kl16.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    target = KL16Tokenizer(KL16Config(**SMALL, weights=str(path)))
    target.prepare()
    for k, v in target.state_dict().items():
        assert torch.equal(v, state[k]), k
    folder = KL16Tokenizer(KL16Config(**SMALL, weights=str(tmp_path)))  # a folder holding kl16.ckpt
    if kind == "ckpt":
        folder.prepare()


def test_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    state = KL16Tokenizer(KL16Config(**SMALL)).state_dict()
    state.pop("decoder.conv_out.bias")
    state["extra.weight"] = torch.zeros(1)
    state["quant_conv.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "bad.ckpt"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as err:
        KL16Tokenizer(KL16Config(**SMALL, weights=str(path))).prepare()
    message = str(err.value)
    assert str(path) in message and "1 missing: decoder.conv_out.bias" in message
    assert "1 unexpected: extra.weight" in message and "quant_conv.weight (3, 3, 1, 1) != (8, 8, 1, 1)" in message


def test_hub_reference_goes_through_the_hub_client(tmp_path, monkeypatch):
    source = KL16Tokenizer(KL16Config(**SMALL))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "kl16.safetensors")
    calls = []

    def fake_download(repo, filename, revision=None):
        calls.append((repo, filename, revision))
        return str(tmp_path / "kl16.safetensors")

    monkeypatch.setattr("carl.weights.hf_hub_download", fake_download)
    for reference in ("user/vae/kl16.safetensors", "hf://user/vae/kl16.safetensors",
                      "https://huggingface.co/user/vae/resolve/v1/kl16.safetensors"):
        KL16Tokenizer(KL16Config(**SMALL, weights=reference)).prepare()
    assert calls == [("user/vae", "kl16.safetensors", None)] * 2 + [("user/vae", "kl16.safetensors", "v1")]


def test_offline_hub_reference_fails_in_one_line():
    with pytest.raises(WeightsError, match="cannot get weights 'nobody/none' .*from the Hub"):
        KL16Tokenizer(KL16Config(**SMALL, weights="nobody/none")).prepare()
