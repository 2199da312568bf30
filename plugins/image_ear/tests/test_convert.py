"""Official EAR checkpoints into carl: strict reading, shape inference, and numerical parity of
hidden states and loss with an independent reading of the official architecture."""

import argparse

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import reference_ear as ref
from carl.cli import app
from carl.hub import load_model
from carl.orders.base import Plan
from carl.plugins import register_commands
from carl_image_ear.kl16 import KL16Config, KL16Tokenizer

WIDTH, DEPTH, HEADS, HEAD_W, NOISE, BUFFER, N, D = 128, 2, 2, 64, 8, 4, 256, 16


def random_maker(seed: int):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=g)

    return r


def vit_block_state(prefix: str, r) -> dict:
    w = WIDTH
    return {f"{prefix}.norm1.weight": 1 + r(w), f"{prefix}.norm1.bias": r(w), f"{prefix}.attn.qkv.weight": r(3 * w, w),
            f"{prefix}.attn.qkv.bias": r(3 * w), f"{prefix}.attn.proj.weight": r(w, w), f"{prefix}.attn.proj.bias": r(w),
            f"{prefix}.norm2.weight": 1 + r(w), f"{prefix}.norm2.bias": r(w), f"{prefix}.mlp.fc1.weight": r(4 * w, w),
            f"{prefix}.mlp.fc1.bias": r(4 * w), f"{prefix}.mlp.fc2.weight": r(w, 4 * w), f"{prefix}.mlp.fc2.bias": r(w)}


def head_state(p: str, r, first: dict, out: int) -> dict:
    """An AdaLN MLP head (EAR's generator or MAR's denoiser): ``first`` holds its input layers."""
    sd = dict(first)
    sd |= {f"{p}.final_layer.linear.weight": r(out, HEAD_W), f"{p}.final_layer.linear.bias": r(out),
           f"{p}.final_layer.adaLN_modulation.1.weight": r(2 * HEAD_W, HEAD_W), f"{p}.final_layer.adaLN_modulation.1.bias": r(2 * HEAD_W)}
    for i in range(2):
        b = f"{p}.res_blocks.{i}"
        sd |= {f"{b}.in_ln.weight": 1 + r(HEAD_W), f"{b}.in_ln.bias": r(HEAD_W), f"{b}.mlp.0.weight": r(HEAD_W, HEAD_W),
               f"{b}.mlp.0.bias": r(HEAD_W), f"{b}.mlp.2.weight": r(HEAD_W, HEAD_W), f"{b}.mlp.2.bias": r(HEAD_W),
               f"{b}.adaLN_modulation.1.weight": r(3 * HEAD_W, HEAD_W), f"{b}.adaLN_modulation.1.bias": r(3 * HEAD_W)}
    return sd


def official_ear_state(seed: int) -> dict:
    """A random EAR checkpoint in the official key layout (small sizes)."""
    r = random_maker(seed)
    sd = {"fake_latent": r(1, WIDTH), "mask_token": r(1, 1, WIDTH), "decoder_pos_embed_learned": r(1, BUFFER + N, WIDTH),
          "class_emb.weight": r(10, WIDTH), "z_proj.weight": r(WIDTH, D), "z_proj.bias": r(WIDTH),
          "decoder_norm.weight": 1 + r(WIDTH), "decoder_norm.bias": r(WIDTH)}
    for i in range(DEPTH):
        sd |= vit_block_state(f"decoder_blocks.{i}", r)
    p = "scoreloss.net"
    return sd | head_state(p, r, {f"{p}.noise_embed.weight": r(HEAD_W, NOISE), f"{p}.noise_embed.bias": r(HEAD_W),
                                  f"{p}.input_proj.weight": r(HEAD_W, WIDTH), f"{p}.input_proj.bias": r(HEAD_W)}, D)


def official_mar_state(seed: int) -> dict:
    """A random MAR checkpoint in the official key layout (small sizes)."""
    r = random_maker(seed)
    sd = {"fake_latent": r(1, WIDTH), "mask_token": r(1, 1, WIDTH), "encoder_pos_embed_learned": r(1, BUFFER + N, WIDTH),
          "decoder_pos_embed_learned": r(1, BUFFER + N, WIDTH), "diffusion_pos_embed_learned": r(1, N, WIDTH),
          "class_emb.weight": r(10, WIDTH), "z_proj.weight": r(WIDTH, D), "z_proj.bias": r(WIDTH),
          "z_proj_ln.weight": 1 + r(WIDTH), "z_proj_ln.bias": r(WIDTH), "encoder_norm.weight": 1 + r(WIDTH),
          "encoder_norm.bias": r(WIDTH), "decoder_embed.weight": r(WIDTH, WIDTH), "decoder_embed.bias": r(WIDTH),
          "decoder_norm.weight": 1 + r(WIDTH), "decoder_norm.bias": r(WIDTH)}
    for i in range(DEPTH):
        sd |= vit_block_state(f"encoder_blocks.{i}", r) | vit_block_state(f"decoder_blocks.{i}", r)
    p = "diffloss.net"
    return sd | head_state(p, r, {
        f"{p}.time_embed.mlp.0.weight": r(HEAD_W, 256), f"{p}.time_embed.mlp.0.bias": r(HEAD_W),
        f"{p}.time_embed.mlp.2.weight": r(HEAD_W, HEAD_W), f"{p}.time_embed.mlp.2.bias": r(HEAD_W),
        f"{p}.cond_embed.weight": r(HEAD_W, WIDTH), f"{p}.cond_embed.bias": r(HEAD_W),
        f"{p}.input_proj.weight": r(HEAD_W, D), f"{p}.input_proj.bias": r(HEAD_W)}, 2 * D)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ear")
    register_commands(app)  # `carl convert` comes from the image plugin
    args = argparse.Namespace(img_size=256, vae_stride=16, buffer_size=BUFFER, score_batch_mul=2, alpha=1.0,
                              mask_ratio_min=0.7, label_drop_prob=0.1, proj_dropout=0.1, attn_dropout=0.1)
    raw, ema = official_ear_state(0), official_ear_state(1)
    torch.save({"model": raw, "model_ema": ema, "epoch": 799, "args": args}, tmp / "checkpoint-last.pth")
    vae = KL16Tokenizer(KL16Config(ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=1, attn_levels=()))
    torch.save({"model": vae.state_dict()}, tmp / "kl16.ckpt")
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp / "checkpoint-last.pth"), str(tmp / "out"), "--vae", str(tmp / "kl16.ckpt"), "--heads", "2"])
    assert result.exit_code == 0, result.output
    model, recipe = load_model(tmp / "out")
    return model.eval(), ema, tmp


def test_sizes_and_settings_come_from_the_checkpoint(converted):
    model, _, _ = converted
    c = model.config
    assert (c.backbone.width, c.backbone.depth, c.backbone.heads, c.conditioner.options.buffer) == (WIDTH, DEPTH, 2, BUFFER)
    assert (c.score.options.width, c.score.options.depth, c.score.options.noise_dim, c.score.options.batch_mul) == (HEAD_W, 2, NOISE, 2)
    assert (model.tokenizer.num_tokens, model.tokenizer.token_dim) == (N, D)


def test_converted_folder_is_a_complete_model_folder(converted):
    """`carl convert` writes what training and save_pretrained write: requirements naming the
    image plugin's pip distribution, a card, the recipe `carl sample` reads."""
    import json

    _, _, tmp = converted
    folder = tmp / "out"
    assert {"config.json", "model.safetensors", "carl.json", "README.md", "recipe.yaml"} <= {p.name for p in folder.iterdir()}
    needs = json.loads((folder / "carl.json").read_text())["plugins"]
    assert needs == {"image_ear": {"distribution": "carl-image-ear", "version": "0.1.0"}}
    card = (folder / "README.md").read_text()
    assert "pip install 'carl>=0.1.0' 'carl-image-ear>=0.1.0'" in card and f"from_pretrained({str(folder)!r})" in card
    assert "data-images" in card and "REPO_ID" not in card


def test_hidden_states_and_loss_equal_the_official_architecture(converted, monkeypatch):
    model, sd, _ = converted  # the EMA weights were converted
    g = torch.Generator().manual_seed(5)
    tokens, labels = torch.randn(2, N, D, generator=g), torch.tensor([3, 7])
    mask = torch.rand(2, N, generator=g) < 0.8  # 1 = to predict
    mask[1] = mask[0]  # EAR masks the same count per row
    with torch.no_grad():
        expected = ref.hidden_states(sd, tokens, mask.float(), labels, heads=HEADS)
        cond = model.conditioner(labels, 2)
        hidden = model._hidden_bidirectional(tokens, cond, ~mask)
        torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=0)

        noise = torch.rand(2 * 2 * 2 * N, NOISE, generator=g) - 0.5  # (samples, batch_mul, B * N)
        expected_loss = ref.loss(sd, expected, tokens, mask.float(), noise, batch_mul=2)
        targets = mask.reshape(-1).nonzero()[:, 0]
        ours = noise.view(2, 2, 2 * N, NOISE)[:, :, targets].reshape(-1, NOISE)  # the same draws, targets only
        monkeypatch.setattr(model.score, "_noise", lambda rows, like, generator=None: ours)
        plan = Plan(order=torch.arange(N).expand(2, N), known=~mask)
        torch.testing.assert_close(model.loss({"tokens": tokens, "condition": labels}, plan), expected_loss, atol=1e-5, rtol=0)


def test_sampling_head_matches_and_seeds_reproduce(converted):
    model, sd, _ = converted
    g = torch.Generator().manual_seed(6)
    hidden, noise = torch.randn(5, WIDTH, generator=g), torch.rand(5, NOISE, generator=g) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(model.score.net(hidden, noise, 0.7), ref.generator(sd, hidden, noise, 0.7), atol=1e-5, rtol=0)

    def draw():
        return model.generate(torch.tensor([1, 2]), num_steps=4, cfg=3.0, temperature=0.7,
                              generator=torch.Generator().manual_seed(0), return_tokens=True)

    torch.testing.assert_close(draw(), draw(), atol=0, rtol=0)


def test_raw_weights_on_request_and_kl16_as_safetensors(converted):
    _, _, tmp = converted
    runner = CliRunner()
    result = runner.invoke(app, ["convert", "ear", str(tmp / "checkpoint-last.pth"), str(tmp / "raw"), "--vae", str(tmp / "kl16.ckpt"), "--raw", "--heads", "2"])
    assert result.exit_code == 0, result.output
    raw, _ = load_model(tmp / "raw")
    torch.testing.assert_close(raw.backbone.mask_token, official_ear_state(0)["mask_token"])
    result = runner.invoke(app, ["convert", "kl16", str(tmp / "kl16.ckpt"), str(tmp / "vae")])
    assert result.exit_code == 0, result.output
    state = load_file(tmp / "vae" / "kl16.safetensors")
    assert state.keys() == torch.load(tmp / "kl16.ckpt", weights_only=True)["model"].keys()


class Custom:  # not allow-listed: weights_only loading must refuse it
    pass


def test_refuses_checkpoints_that_need_unpickling_code(tmp_path, converted):
    torch.save({"model": official_ear_state(0), "args": Custom()}, tmp_path / "evil.pth")
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp_path / "evil.pth"), str(tmp_path / "out"), "--vae", "x"])
    assert result.exit_code != 0
    assert "cannot read checkpoint" in str(result.exception)


@pytest.fixture(scope="module")
def converted_mar(converted):
    _, _, tmp = converted
    args = argparse.Namespace(img_size=256, buffer_size=BUFFER, diffusion_batch_mul=2, num_sampling_steps="20")
    torch.save({"model": official_mar_state(2), "model_ema": official_mar_state(3), "args": args}, tmp / "mar.pth")
    result = CliRunner().invoke(app, ["convert", "mar", str(tmp / "mar.pth"), str(tmp / "mar"), "--vae", str(tmp / "kl16.ckpt"), "--heads", "2"])
    assert result.exit_code == 0, result.output
    model, _ = load_model(tmp / "mar")
    return model.eval(), official_mar_state(3)


def test_mar_b_layout_is_the_official_one():
    from carl.config import ModelConfig, from_dict
    from carl.model import ContinuousAR

    config = from_dict(ModelConfig, {
        "tokenizer": {"name": "patch", "shape": [16, 16, 16], "patch": [1, 1], "normalize": False},
        "conditioner": {"name": "class", "num_classes": 1000, "buffer": 64},
        "backbone": {"width": 768, "depth": 12, "encoder_depth": 12, "heads": 12},
        "score": {"name": "diffusion", "depth": 6, "width": 1024}})
    with torch.device("meta"):
        model = ContinuousAR(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("tokenizer.")}
    assert len(state) == 364 and sum(v.numel() for v in state.values()) == 207_924_768


def test_mar_hidden_states_and_loss_equal_the_official_architecture(converted_mar, monkeypatch):
    model, sd = converted_mar
    c = model.config
    assert (c.backbone.encoder_depth, c.backbone.depth, c.score.name, c.score.options.sample_steps) == (DEPTH, DEPTH, "diffusion", 20)
    g = torch.Generator().manual_seed(7)
    tokens, labels = torch.randn(2, N, D, generator=g), torch.tensor([1, 8])
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[:, torch.randperm(N, generator=g)[:200]] = True  # the same count per row, as MAR masks
    with torch.no_grad():
        expected = ref.mar_hidden_states(sd, tokens, mask, labels, heads=HEADS)
        hidden = model._hidden_bidirectional(tokens, model.conditioner(labels, 2), ~mask)
        torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=0)

        t = torch.randint(0, 1000, (2 * 2 * N,), generator=g)
        t[::5] = 0  # MAR's t = 0 term is the discretised likelihood, not the KL
        noise = torch.randn(2 * 2 * N, D, generator=g)
        expected_loss = ref.mar_loss(sd, expected, tokens, mask.float(), t, noise, batch_mul=2)
        rows = torch.cat([mask.reshape(-1).nonzero()[:, 0] + k * 2 * N for k in range(2)])  # targets of each repeat
        monkeypatch.setattr(model.score, "draw_levels", lambda target: t[rows])
        monkeypatch.setattr(torch, "randn_like", lambda like: noise[rows])
        loss = model.loss({"tokens": tokens, "condition": labels}, Plan(order=torch.arange(N).expand(2, N), known=~mask))
        torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=0)


def test_mar_samples_reproducibly(converted_mar):
    model, _ = converted_mar

    def draw():
        return model.generate(torch.tensor([4, 5]), num_steps=3, cfg=2.0, generator=torch.Generator().manual_seed(0), return_tokens=True)

    first = draw()
    assert first.shape == (2, N, D) and torch.isfinite(first).all()
    torch.testing.assert_close(first, draw(), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Attention heads and the converted recipe


@pytest.mark.parametrize("width, args, heads", [
    (768, None, 12), (1024, None, 16), (1280, None, 16),  # EAR-H / MAR-H: 16 heads, not 1280 // 64 = 20
    (1280, argparse.Namespace(model="ear_huge"), 16), (768, argparse.Namespace(model="mar_base"), 12),
    (128, None, 2), (1280, None, 10),  # explicit --heads
])
def test_attention_heads_follow_the_official_sizes(width, args, heads):
    from carl_image_ear.convert import attention_heads

    explicit = heads if width == 128 or heads == 10 else None
    assert attention_heads(width, args, explicit) == heads


@pytest.mark.parametrize("width, args, heads, message", [
    (128, None, None, "width 128 is not an official size .* give them with --heads"),
    (128, argparse.Namespace(model="ear_base"), None, "args name model 'ear_base' \\(width 768\\) but its weights have width 128"),
    (1024, argparse.Namespace(model="ear_xl"), None, "model 'ear_xl', not an official size"),
    (128, None, 3, "--heads 3 does not divide the checkpoint's width 128"),
])
def test_attention_heads_that_cannot_be_known_fail_clearly(width, args, heads, message):
    from carl.weights import WeightsError
    from carl_image_ear.convert import attention_heads

    with pytest.raises(WeightsError, match=message):
        attention_heads(width, args, heads)


def test_convert_without_heads_of_an_unofficial_width_fails_in_one_line(converted, tmp_path):
    _, _, tmp = converted
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp / "checkpoint-last.pth"), str(tmp_path / "out"), "--vae", str(tmp / "kl16.ckpt")])
    assert result.exit_code != 0 and "give them with --heads" in str(result.exception)
    assert not (tmp_path / "out" / "model.safetensors").exists()


EAR_ARGS = dict(img_size=256, vae_stride=16, buffer_size=BUFFER, score_batch_mul=2, alpha=1.0, mask_ratio_min=0.7,
                label_drop_prob=0.1, proj_dropout=0.1, attn_dropout=0.1, batch_size=32, world_size=8, accumulation_steps=2,
                epochs=800, blr=1e-4, lr=1e-4 * 512 / 256, lr_schedule="constant", warmup_epochs=100, min_lr=0.0,
                weight_decay=0.02, grad_clip=3.0, ema_rate=0.9999, score_lrscale=0.25, train_temperature=0.99,
                data_path="/data/in1k", seed=1, num_workers=10, cfg=1.0)


def convert_with(tmp, out, args):
    torch.save({"model": official_ear_state(0), "args": args}, tmp / f"{out.name}.pth")
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp / f"{out.name}.pth"), str(out), "--vae", str(tmp / "kl16.ckpt"), "--heads", "2"])
    assert result.exit_code == 0, result.output
    return load_model(out)


def test_the_recipe_takes_train_settings_data_and_train_temperature_from_the_args(converted, tmp_path):
    _, _, tmp = converted
    model, recipe = convert_with(tmp, tmp_path / "with-args", argparse.Namespace(**EAR_ARGS))
    t = recipe.train
    assert (t.global_batch, t.micro_batch, t.epochs, t.base_lr, t.lr) == (512, 32, 800, 1e-4, None)  # lr = blr x 512 / 256
    assert (t.warmup_epochs, t.weight_decay, t.grad_clip, t.ema_decay, t.head_lr_scale, t.seed) == (100, 0.02, 3.0, 0.9999, 0.25, 1)
    assert t.train_temperature == ((0.0, 0.99),) and model.score.config.train_temperature == 0.99
    assert recipe.data.name == "images" and recipe.data.options.source == "/data/in1k" and recipe.data.options.channels == 3


def test_an_explicit_lr_is_kept_and_without_args_the_data_is_imagenet(converted, tmp_path):
    _, _, tmp = converted
    _, recipe = convert_with(tmp, tmp_path / "lr", argparse.Namespace(**{**EAR_ARGS, "lr": 5e-4}))
    assert recipe.train.lr == 5e-4
    _, recipe = convert_with(tmp, tmp_path / "bare", None)
    assert recipe.data.options.source == "data/imagenet" and recipe.data.options.source != "mnist"
