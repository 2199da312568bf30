"""KL-16: the official layout, numerical parity with an independent reading of the
architecture, strict loading from every kind of reference, chunked decoding, the cache interface."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import reference_kl16 as ref
from carl.errors import WeightsError
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
    tokenizer = KL16Tokenizer(KL16Config())
    assert (tokenizer.input_shape, tokenizer.num_tokens, tokenizer.token_dim) == ((3, 256, 256), 256, 16)  # 16 x 16 latents of 16
    state = tokenizer.state_dict()
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


@pytest.mark.parametrize("images", [
    torch.rand(2, 3, 18, 34, generator=torch.Generator().manual_seed(4)),  # not square, odd sides after a halving
    0.5 + 1e-3 * torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)),  # near-constant: GroupNorm's eps shows
], ids=["18x34", "near-constant"])
def test_parity_with_the_reference_on_any_image(images):
    """The encoder is convolutional: any (H, W) encodes as the reference (LDM) does, padding included."""
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL)))
    with torch.no_grad():
        mean, log_var = ref.encode(tokenizer.state_dict(), images * 2 - 1)
        moments = tokenizer.moments(images)
    assert moments.shape == (2, 8, images.shape[2] // 2 // 2, images.shape[3] // 2 // 2)  # 18 x 34 -> 9 x 17 -> 4 x 8
    torch.testing.assert_close(moments, torch.cat([mean, log_var], 1), atol=1e-4, rtol=1e-4)


def test_log_variance_is_clamped_to_the_range_of_ldm():
    tokenizer = KL16Tokenizer(KL16Config(**SMALL))
    with torch.no_grad():
        tokenizer.quant_conv.weight.zero_()
        tokenizer.quant_conv.bias.copy_(torch.tensor([-50.0, 50.0, 0.0, 1.0, -45.0, -29.0, 19.0, 45.0]))
    moments = tokenizer.moments(torch.rand(1, 3, 32, 32))
    expected = torch.tensor([-50.0, 50.0, 0.0, 1.0, -30.0, -29.0, 19.0, 20.0])  # the mean is not clamped
    torch.testing.assert_close(moments, expected[None, :, None, None].expand(1, 8, 8, 8), atol=0, rtol=0)


def posterior(seed: int = 0, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(batch, 4, 2, 2, generator=g), torch.rand(batch, 4, 2, 2, generator=g) * 4 - 3], 1)


def sampled(moments: torch.Tensor, noise: torch.Tensor, scale: float = 0.2325) -> torch.Tensor:
    """LDM's DiagonalGaussianDistribution.sample: mean + exp(log_var / 2) * noise, scaled, as (B, h w, c) tokens."""
    mean, log_var = moments.chunk(2, 1)
    return (scale * (mean + torch.exp(0.5 * log_var) * noise)).flatten(2).transpose(1, 2)


def test_posterior_samples_are_mean_plus_std_times_the_generators_noise():
    tokenizer = KL16Tokenizer(KL16Config(**SMALL))
    moments = posterior()
    noise = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(7))
    draw = tokenizer.tokens_from_moments(moments, sample=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(draw, sampled(moments, noise))
    torch.manual_seed(8)  # no generator: the global one
    draw = tokenizer.tokens_from_moments(moments, sample=True)
    torch.testing.assert_close(draw, sampled(moments, torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(8))))


def test_noise_is_drawn_on_the_generators_device_and_lands_on_the_moments_device():
    """The meta device stands in for an accelerator: a CPU generator draws on the CPU whatever the
    default device, and the draws then move to the moments; without a generator they are drawn there."""
    tokenizer = KL16Tokenizer(KL16Config(**SMALL, sample_posterior=True))
    moments = posterior()
    row = {"moments": moments, "moments_flip": moments.flip(-1)}
    expected = sampled(moments, torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(7)))
    with torch.device("meta"):  # the default device is not the moments' one
        on_cpu = tokenizer.tokens_from_moments(moments, sample=True, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(on_cpu, expected)
        assert tokenizer.tokens_from_moments(moments, sample=True).device.type == "cpu"
        assert tokenizer.from_cache(row, generator=torch.Generator().manual_seed(0)).device.type == "cpu"
        assert tokenizer.from_cache(row).device.type == "cpu"
    meta = moments.to("meta")
    draws = tokenizer.tokens_from_moments(meta, sample=True, generator=torch.Generator().manual_seed(7))
    picked = tokenizer.from_cache({"moments": meta, "moments_flip": meta}, generator=torch.Generator().manual_seed(0))
    assert draws.device.type == picked.device.type == "meta" and draws.shape == picked.shape == (3, 4, 4)


def test_encode_samples_the_posterior_only_in_training():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL)))
    mean = tokenizer.tokens_from_moments(tokenizer.moments(images), sample=False)
    torch.testing.assert_close(tokenizer.encode(images), mean, atol=0, rtol=0)  # eval: the mean
    tokenizer.train()
    assert not torch.allclose(tokenizer.encode(images), tokenizer.encode(images))  # training: a draw each time
    fixed = randomized(KL16Tokenizer(KL16Config(**SMALL, sample_posterior=False))).train()
    torch.testing.assert_close(fixed.encode(images), mean, atol=0, rtol=0)


def test_from_cache_is_reproducible_from_the_seed_and_samples_the_posterior():
    tokenizer = KL16Tokenizer(KL16Config(**SMALL))  # sample_posterior: True
    moments = posterior(batch=16)
    row = {"moments": moments, "moments_flip": moments.flip(-1)}
    first = tokenizer.from_cache(row, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, tokenizer.from_cache(row, generator=torch.Generator().manual_seed(3)), atol=0, rtol=0)
    torch.manual_seed(4)
    second = tokenizer.from_cache(row)
    torch.manual_seed(4)
    torch.testing.assert_close(second, tokenizer.from_cache(row), atol=0, rtol=0)
    means = torch.stack([tokenizer.tokens_from_moments(m, sample=False) for m in (moments, moments.flip(-1))])
    assert ((first[None] - means).abs().amax((2, 3)) > 1e-3).all()  # neither mean: sampled


def test_from_cache_flips_exactly_half_of_the_uniform_draws(monkeypatch):
    """A draw u in [0, 1) picks the mirror image when u < 1/2: half of rand's 2^24 values, not one more."""
    tokenizer = KL16Tokenizer(KL16Config(**SMALL, sample_posterior=False))
    moments = posterior(batch=4)
    row = {"moments": moments, "moments_flip": moments.flip(-1)}
    monkeypatch.setattr(torch, "rand", lambda n, generator=None, device=None: torch.tensor([0.0, 0.5 - 2**-24, 0.5, 1 - 2**-24]))
    plain, mirrored = (tokenizer.tokens_from_moments(m, sample=False) for m in (moments, moments.flip(-1)))
    expected = torch.stack([mirrored[0], mirrored[1], plain[2], plain[3]])
    torch.testing.assert_close(tokenizer.from_cache(row), expected, atol=0, rtol=0)


def test_ready_made_tokens_in_a_cache_row_are_used_as_they_are():
    tokenizer = KL16Tokenizer(KL16Config(**SMALL))
    tokens = torch.randn(2, 64, 4).half()
    torch.testing.assert_close(tokenizer.from_cache({"tokens": tokens}), tokens.float(), atol=0, rtol=0)


def test_decodes_float_tokens_with_a_tokenizer_in_another_precision():
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL)))
    tokens = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(0))
    expected = tokenizer.decode(tokens)
    images = tokenizer.double().decode(tokens)
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=0)


def test_renormalize_gives_unit_variance_tokens():
    """The scale that KL-16 needs for unit-variance tokens (as LDM found 0.18215, MAR 0.2325)."""
    from carl.tokenizers.normalize import measure

    images = [{"data": x} for x in torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))]
    tokenizer = randomized(KL16Tokenizer(KL16Config(**SMALL, scale=0.01, sample_posterior=False)))
    before = measure(tokenizer, images, batch_size=8)
    assert before.overall_std < 1  # a scale that is too small
    config = dataclasses.replace(tokenizer.config, **tokenizer.renormalize(before))
    renormalized = KL16Tokenizer(config)
    renormalized.load_state_dict(tokenizer.state_dict())
    assert measure(renormalized, images, batch_size=8).overall_std == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("options, message", [
    (dict(ch_mult=()), "ch_mult needs at least one level"),
    (dict(ch=48, ch_mult=(1, 2)), "ch 48 times each of ch_mult (1, 2), and 48 itself, must be a multiple of 32 (the GroupNorm groups)"),
    (dict(ch=16, ch_mult=(2, 4)), "ch 16 times each of ch_mult (2, 4), and 16 itself, must be a multiple of 32"),  # conv_in's width
    (dict(ch_mult=(1, 2, 2), image_size=34), "image_size 34 is not a multiple of the stride 4"),
    (dict(ch_mult=(1, 2, 2), attn_levels=(3,)), "attn_levels (3,) names a level beyond the 3 of ch_mult"),
    (dict(scale=0.0), "scale "),
], ids=["no-levels", "level-width", "conv-in-width", "stride", "attn-level", "range"])
def test_configs_that_cannot_build_are_refused_naming_the_field(options, message):
    from carl.errors import FieldError

    with pytest.raises(FieldError) as err:
        KL16Config(**{**dict(image_size=32, ch=32, attn_levels=()), **options})
    assert str(err.value).startswith(message) and err.value.key == message.split()[0]
