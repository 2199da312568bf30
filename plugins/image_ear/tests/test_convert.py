"""Official EAR checkpoints into carl: strict reading, shape inference, and numerical parity of
hidden states and loss with an independent reading of the official architecture."""

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import reference_ear as ref
from carl.cli import app
from carl.errors import WeightsError
from carl.model import load_model
from carl.orders.base import Plan
from carl.plugins import register_commands
from carl_image_ear.kl16 import KL16Config, KL16Tokenizer

WIDTH, DEPTH, HEADS, HEAD_W, NOISE, BUFFER, N, D = 128, 2, 2, 64, 8, 4, 256, 16


def random_maker(seed: int | None):
    """Small random tensors, or (``seed`` None) shape-only meta tensors for official-size layouts."""
    if seed is None:
        return lambda *shape: torch.empty(*shape, device="meta")
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=g)

    return r


def vit_block_state(prefix: str, r, w: int = WIDTH) -> dict:
    return {f"{prefix}.norm1.weight": 1 + r(w), f"{prefix}.norm1.bias": r(w), f"{prefix}.attn.qkv.weight": r(3 * w, w),
            f"{prefix}.attn.qkv.bias": r(3 * w), f"{prefix}.attn.proj.weight": r(w, w), f"{prefix}.attn.proj.bias": r(w),
            f"{prefix}.norm2.weight": 1 + r(w), f"{prefix}.norm2.bias": r(w), f"{prefix}.mlp.fc1.weight": r(4 * w, w),
            f"{prefix}.mlp.fc1.bias": r(4 * w), f"{prefix}.mlp.fc2.weight": r(w, 4 * w), f"{prefix}.mlp.fc2.bias": r(w)}


def head_state(p: str, r, first: dict, out: int, w: int = HEAD_W, depth: int = 2) -> dict:
    """An AdaLN MLP head (EAR's generator or MAR's denoiser): ``first`` holds its input layers."""
    sd = dict(first)
    sd |= {f"{p}.final_layer.linear.weight": r(out, w), f"{p}.final_layer.linear.bias": r(out),
           f"{p}.final_layer.adaLN_modulation.1.weight": r(2 * w, w), f"{p}.final_layer.adaLN_modulation.1.bias": r(2 * w)}
    for i in range(depth):
        b = f"{p}.res_blocks.{i}"
        sd |= {f"{b}.in_ln.weight": 1 + r(w), f"{b}.in_ln.bias": r(w), f"{b}.mlp.0.weight": r(w, w),
               f"{b}.mlp.0.bias": r(w), f"{b}.mlp.2.weight": r(w, w), f"{b}.mlp.2.bias": r(w),
               f"{b}.adaLN_modulation.1.weight": r(3 * w, w), f"{b}.adaLN_modulation.1.bias": r(3 * w)}
    return sd


def official_ear_state(seed: int | None, width=WIDTH, depth=DEPTH, head_depth=2, head_width=HEAD_W, positions=BUFFER + N,
                       classes=10, noise=NOISE) -> dict:
    """An EAR checkpoint in the official key layout: random (small sizes) or, seed None, meta tensors."""
    r = random_maker(seed)
    sd = {"fake_latent": r(1, width), "mask_token": r(1, 1, width), "decoder_pos_embed_learned": r(1, positions, width),
          "class_emb.weight": r(classes, width), "z_proj.weight": r(width, D), "z_proj.bias": r(width),
          "decoder_norm.weight": 1 + r(width), "decoder_norm.bias": r(width)}
    for i in range(depth):
        sd |= vit_block_state(f"decoder_blocks.{i}", r, width)
    p = "scoreloss.net"
    return sd | head_state(p, r, {f"{p}.noise_embed.weight": r(head_width, noise), f"{p}.noise_embed.bias": r(head_width),
                                  f"{p}.input_proj.weight": r(head_width, width), f"{p}.input_proj.bias": r(head_width)},
                           D, head_width, head_depth)


def official_mar_state(seed: int | None, width=WIDTH, depth=DEPTH, head_depth=2, head_width=HEAD_W, positions=BUFFER + N,
                       classes=10) -> dict:
    """A MAR checkpoint in the official key layout (encoder and decoder of ``depth`` blocks each)."""
    r = random_maker(seed)
    w = width
    sd = {"fake_latent": r(1, w), "mask_token": r(1, 1, w), "encoder_pos_embed_learned": r(1, positions, w),
          "decoder_pos_embed_learned": r(1, positions, w), "diffusion_pos_embed_learned": r(1, N, w),
          "class_emb.weight": r(classes, w), "z_proj.weight": r(w, D), "z_proj.bias": r(w),
          "z_proj_ln.weight": 1 + r(w), "z_proj_ln.bias": r(w), "encoder_norm.weight": 1 + r(w),
          "encoder_norm.bias": r(w), "decoder_embed.weight": r(w, w), "decoder_embed.bias": r(w),
          "decoder_norm.weight": 1 + r(w), "decoder_norm.bias": r(w)}
    for i in range(depth):
        sd |= vit_block_state(f"encoder_blocks.{i}", r, w) | vit_block_state(f"decoder_blocks.{i}", r, w)
    p = "diffloss.net"
    hw = head_width
    return sd | head_state(p, r, {
        f"{p}.time_embed.mlp.0.weight": r(hw, 256), f"{p}.time_embed.mlp.0.bias": r(hw),
        f"{p}.time_embed.mlp.2.weight": r(hw, hw), f"{p}.time_embed.mlp.2.bias": r(hw),
        f"{p}.cond_embed.weight": r(hw, w), f"{p}.cond_embed.bias": r(hw),
        f"{p}.input_proj.weight": r(hw, D), f"{p}.input_proj.bias": r(hw)}, 2 * D, hw, head_depth)


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
        hidden = model.hidden_bidirectional(tokens, cond, ~mask)
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


def test_refuses_checkpoints_that_need_unpickling_code(tmp_path, converted, monkeypatch):
    torch.save({"model": official_ear_state(0), "args": Custom()}, tmp_path / "evil.pth")
    # weights_only is asked for explicitly, so not even torch's opt-out switch turns the refusal off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp_path / "evil.pth"), str(tmp_path / "out"), "--vae", "x"])
    assert result.exit_code != 0
    assert f"cannot read checkpoint {tmp_path / 'evil.pth'}: UnpicklingError: " in str(result.exception)


@pytest.mark.parametrize("content", [{"model_ema": {}, "args": None}, [{"model": {}}]], ids=["no-model", "a-list"])
def test_refuses_files_that_are_not_official_checkpoints(tmp_path, content):
    from carl.errors import WeightsError
    from carl_image_ear.convert import read_official

    torch.save(content, tmp_path / "other.pth")
    with pytest.raises(WeightsError) as err:
        read_official(tmp_path / "other.pth")
    assert str(err.value) == f"{tmp_path / 'other.pth'} is not an official checkpoint (no 'model' state dict)"


def test_a_checkpoint_saved_on_a_gpu_converts_on_the_cpu_with_ema_weights_by_default(converted, tmp_path, monkeypatch):
    """Official checkpoints hold CUDA tensors; `kl16.ckpt` is found in a folder as `--vae`."""
    from carl_image_ear.convert import convert_official

    _, ema, tmp = converted
    with monkeypatch.context() as patch:  # write the file as a CUDA training run would, without a GPU
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"model": official_ear_state(0), "model_ema": ema, "args": None}, tmp_path / "gpu.pth")
    assert convert_official("ear", tmp_path / "gpu.pth", tmp_path / "out", str(tmp), heads=2) == tmp_path / "out"
    model, recipe = load_model(tmp_path / "out")
    torch.testing.assert_close(model.backbone.mask_token, ema["mask_token"], atol=0, rtol=0)
    assert recipe.output == str(tmp_path / "out")


def test_a_key_outside_the_official_layout_is_refused_by_name(converted, tmp_path):
    _, _, tmp = converted
    torch.save({"model": official_ear_state(0) | {"decoder_extra.weight": torch.zeros(2)}}, tmp_path / "odd.pth")
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp_path / "odd.pth"), str(tmp_path / "out"), "--vae", str(tmp / "kl16.ckpt"), "--heads", "2"])
    assert result.exit_code != 0
    assert str(result.exception) == "unexpected key in the official checkpoint: decoder_extra.weight"


@pytest.fixture(scope="module")
def converted_mar(converted):
    _, _, tmp = converted
    args = argparse.Namespace(img_size=256, buffer_size=BUFFER, diffusion_batch_mul=2, num_sampling_steps="20")
    torch.save({"model": official_mar_state(2), "model_ema": official_mar_state(3), "args": args}, tmp / "mar.pth")
    result = CliRunner().invoke(app, ["convert", "mar", str(tmp / "mar.pth"), str(tmp / "mar"), "--vae", str(tmp / "kl16.ckpt"), "--heads", "2"])
    assert result.exit_code == 0, result.output
    model, recipe = load_model(tmp / "mar")
    return model.eval(), official_mar_state(3), recipe


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
    model, sd, _ = converted_mar
    c = model.config
    assert (c.backbone.encoder_depth, c.backbone.depth, c.score.name, c.score.options.sample_steps) == (DEPTH, DEPTH, "diffusion", 20)
    g = torch.Generator().manual_seed(7)
    tokens, labels = torch.randn(2, N, D, generator=g), torch.tensor([1, 8])
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[:, torch.randperm(N, generator=g)[:200]] = True  # the same count per row, as MAR masks
    with torch.no_grad():
        expected = ref.mar_hidden_states(sd, tokens, mask, labels, heads=HEADS)
        hidden = model.hidden_bidirectional(tokens, model.conditioner(labels, 2), ~mask)
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
    model, _, _ = converted_mar

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
    (128, None, 2), (1280, None, 10), (128, None, 1),  # explicit --heads (one head is a valid choice)
])
def test_attention_heads_follow_the_official_sizes(width, args, heads):
    from carl_image_ear.convert import attention_heads

    explicit = heads if width == 128 or heads in (10, 1) else None
    assert attention_heads(width, args, explicit) == heads


@pytest.mark.parametrize("width, args, heads, message", [
    (128, None, None, "width 128 is not an official size \\(768, 1024, 1280\\): .* give them with --heads"),
    (128, argparse.Namespace(model="ear_base"), None, "args name model 'ear_base' \\(width 768\\) but its weights have width 128"),
    (1024, argparse.Namespace(model="ear_xl"), None,
     "model 'ear_xl', not an official size \\(ear_base, ear_large, ear_huge, mar_base, mar_large, mar_huge\\)"),
    (128, None, 3, "--heads 3 does not divide the checkpoint's width 128"),
    (128, None, 0, "--heads 0 does not divide the checkpoint's width 128"),
])
def test_attention_heads_that_cannot_be_known_fail_clearly(width, args, heads, message):
    from carl.errors import WeightsError
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
    from carl.config import load_recipe

    shipped = load_recipe("ear-b-in256")  # the paper's recipe: ImageNet train split, its sampling settings
    assert (recipe.data, recipe.sample) == (shipped.data, shipped.sample)


# ---------------------------------------------------------------------------------------------
# The official sizes: configs read from shapes alone (meta tensors, no memory), settings from args


DATA = Path(__file__).parent / "data"
# models/ear.py and models/mar.py (width, depth, heads) and the READMEs' heads (scoreloss_d/_w, diffloss_d/_w)
OFFICIAL = {  # name: (width, decoder depth, encoder depth, attention heads, head depth, head width)
    "ear_base": (768, 24, 0, 12, 6, 1024), "ear_large": (1024, 32, 0, 16, 8, 1280), "ear_huge": (1280, 40, 0, 16, 12, 1536),
    "mar_base": (768, 12, 12, 12, 6, 1024), "mar_large": (1024, 16, 16, 16, 8, 1280), "mar_huge": (1280, 20, 20, 16, 12, 1536),
}


def read_layout(name: str) -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in (DATA / name).read_text().splitlines():
        if match := re.match(r"(\S+) \(([\d, ]*)\)", line):
            layout[match[1]] = tuple(int(x) for x in match[2].split(",") if x.strip())
    return layout


def official_state(name: str, positions: int = 64 + 256) -> dict:
    """Meta tensors in the layout of the official checkpoint of model ``name`` (ImageNet: 1000 classes)."""
    width, depth, _, _, head_depth, head_width = OFFICIAL[name]
    make = official_ear_state if name.startswith("ear") else official_mar_state
    return make(None, width=width, depth=depth, head_depth=head_depth, head_width=head_width, positions=positions, classes=1000,
                **({"noise": 64} if name.startswith("ear") else {}))


def official_kl16_options() -> dict:
    from carl_image_ear.convert import kl16_options

    return kl16_options({k: torch.empty(shape, device="meta") for k, shape in read_layout("kl16_vae_layout.txt").items()})


def test_kl16_architecture_is_read_from_the_official_layout():
    """MAR's kl16.ckpt: AutoencoderKL(ch=128, ch_mult=(1, 1, 2, 2, 4), 2 res blocks, attention at 16 x 16, 16 channels)."""
    assert official_kl16_options() == {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_levels": [4], "z_channels": 16}


@pytest.mark.parametrize("name, layout, tensors, parameters", [
    ("ear_base", "ear_b_layout.txt", 352, 205_608_720), ("mar_base", "mar_b_layout.txt", 364, 207_924_768)])
def test_the_official_size_layouts_here_are_the_official_ones(name, layout, tensors, parameters):
    state, reference = official_state(name), read_layout(layout)
    assert {k: tuple(state[k].shape) for k in reference} == reference
    assert set(state) - set(reference) <= {k for k in state if re.search(r"(blocks|res_blocks)\.[1-9]\d*\.", k)}
    assert (len(state), sum(v.numel() for v in state.values())) == (tensors, parameters)


@pytest.mark.parametrize("name", OFFICIAL)
@pytest.mark.parametrize("with_model_name", [False, True], ids=["no-args", "args-model"])
def test_official_sizes_convert_to_the_papers_configs_with_the_official_defaults(name, with_model_name):
    from carl_image_ear.convert import ear_model_config, mar_model_config

    width, depth, encoder_depth, heads, head_depth, head_width = OFFICIAL[name]
    args = argparse.Namespace(model=name) if with_model_name else None
    ear = name.startswith("ear")
    c = (ear_model_config if ear else mar_model_config)(official_state(name), args, official_kl16_options())
    b, s = c.backbone, c.score.options
    assert (b.width, b.depth, b.encoder_depth, b.heads, b.mlp_ratio, b.dropout, b.attn_dropout) == (width, depth, encoder_depth, heads, 4.0, 0.1, 0.1)
    assert (s.depth, s.width) == (head_depth, head_width)
    assert (c.conditioner.options.num_classes, c.conditioner.options.buffer, c.conditioner.options.label_drop) == (1000, 64, 0.1)
    assert c.tokenizer.options == KL16Config(image_size=256) and c.order.options.mask_ratio_min == 0.7
    if ear:  # main_ear.py's defaults, with the README's --score_batch_mul 2
        assert (c.score.name, s.alpha, s.num_samples, s.batch_mul, s.train_temperature, s.noise_dim) == ("energy", 1.0, 2, 2, 1.0, 64)
        from carl.config import load_recipe

        shipped = load_recipe(f"ear-{name[4]}-in256").model  # the paper's recipe of the same model
        assert c == dataclasses.replace(shipped, tokenizer=dataclasses.replace(shipped.tokenizer, options=c.tokenizer.options))
    else:  # main_mar.py's 100 sampling steps, with the README's --diffusion_batch_mul 4
        assert (c.score.name, s.batch_mul, s.sample_steps) == ("diffusion", 4, 100)


@pytest.mark.parametrize("kind", ["ear", "mar"])
def test_args_that_name_another_size_than_the_weights_are_refused(kind):
    from carl.errors import WeightsError
    from carl_image_ear.convert import ear_model_config, mar_model_config

    make = ear_model_config if kind == "ear" else mar_model_config
    with pytest.raises(WeightsError, match=f"args name model '{kind}_large' \\(width 1024\\) but its weights have width 768"):
        make(official_state(f"{kind}_base"), argparse.Namespace(model=f"{kind}_large"), official_kl16_options())
    with pytest.raises(WeightsError, match=f"args name model '{kind}_xl', not an official size"):
        make(official_state(f"{kind}_base"), argparse.Namespace(model=f"{kind}_xl"), official_kl16_options())


def test_every_setting_comes_from_the_args():
    """A 512-pixel run with a buffer of 32 and every setting off its default: each one is taken from the args."""
    from carl_image_ear.convert import ear_model_config, mar_model_config

    common = dict(img_size=512, buffer_size=32, label_drop_prob=0.2, mask_ratio_min=0.5, proj_dropout=0.0, attn_dropout=0.05)
    positions = 32 + (512 // 16) ** 2
    ear = ear_model_config(official_state("ear_base", positions), argparse.Namespace(
        **common, alpha=1.5, score_batch_mul=4, train_temperature=0.99), official_kl16_options())
    mar = mar_model_config(official_state("mar_base", positions), argparse.Namespace(
        **common, diffusion_batch_mul=1, num_sampling_steps="250"), official_kl16_options())
    for c in (ear, mar):
        assert (c.tokenizer.options.image_size, c.conditioner.options.buffer, c.conditioner.options.label_drop) == (512, 32, 0.2)
        assert (c.order.options.mask_ratio_min, c.backbone.dropout, c.backbone.attn_dropout) == (0.5, 0.0, 0.05)
    assert (ear.score.options.alpha, ear.score.options.batch_mul, ear.score.options.train_temperature) == (1.5, 4, 0.99)
    assert (mar.score.options.batch_mul, mar.score.options.sample_steps) == (1, 250)


@pytest.mark.parametrize("kind", ["ear", "mar"])
def test_args_and_weights_that_disagree_on_the_buffer_are_refused_naming_the_table(converted, tmp_path, kind):
    """The buffer is a training setting (--buffer_size): the positional tables must have room for it."""
    _, _, tmp = converted
    state = official_ear_state(0) if kind == "ear" else official_mar_state(0)
    torch.save({"model": state, "args": argparse.Namespace(buffer_size=BUFFER + 4)}, tmp_path / "odd.pth")
    result = CliRunner().invoke(app, ["convert", kind, str(tmp_path / "odd.pth"), str(tmp_path / "out"), "--vae", str(tmp / "kl16.ckpt"), "--heads", "2"])
    assert result.exit_code != 0
    message = str(result.exception)
    assert message.startswith(f"{tmp_path / 'odd.pth'} (model) does not fit ContinuousAR: ")
    assert f"backbone.pos_embed (1, {BUFFER + N}, {WIDTH}) != (1, {BUFFER + 4 + N}, {WIDTH})" in message


def test_a_vae_that_does_not_fit_is_refused_naming_the_file(converted, tmp_path):
    _, _, tmp = converted
    vae = torch.load(tmp / "kl16.ckpt", weights_only=True)["model"] | {"extra.weight": torch.zeros(1)}
    torch.save({"model": vae}, tmp_path / "kl16.ckpt")
    result = CliRunner().invoke(app, ["convert", "ear", str(tmp / "checkpoint-last.pth"), str(tmp_path / "out"), "--vae", str(tmp_path), "--heads", "2"])
    assert result.exit_code != 0
    assert str(result.exception) == f"{tmp_path / 'kl16.ckpt'} does not fit KL16Tokenizer: 1 unexpected: extra.weight"


# ---------------------------------------------------------------------------------------------
# `carl convert kl16`


KL16_SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), z_channels=4)


def test_kl16_converts_any_architecture_into_a_folder_it_creates_or_reuses(tmp_path):
    from carl_image_ear.convert import convert_kl16

    state = KL16Tokenizer(KL16Config(image_size=32, **KL16_SMALL)).state_dict()
    torch.save({"model": state}, tmp_path / "kl16.ckpt")
    written = convert_kl16(str(tmp_path), tmp_path / "new" / "vae")  # a folder holding kl16.ckpt; parents created
    assert written == tmp_path / "new" / "vae" / "kl16.safetensors"
    converted = load_file(written)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], v) for k, v in state.items())
    assert convert_kl16(str(tmp_path / "kl16.ckpt"), tmp_path / "new" / "vae") == written  # again, into the same folder


def test_kl16_that_does_not_fit_its_own_shapes_is_refused_naming_file_key_and_shapes(tmp_path):
    from carl.errors import WeightsError
    from carl_image_ear.convert import convert_kl16

    state = KL16Tokenizer(KL16Config(image_size=32, **KL16_SMALL)).state_dict()
    state["post_quant_conv.weight"] = torch.zeros(4, 8, 1, 1)  # 4 latent channels elsewhere
    torch.save({"model": state}, tmp_path / "bad.ckpt")
    with pytest.raises(WeightsError) as err:
        convert_kl16(str(tmp_path / "bad.ckpt"), tmp_path / "out")
    assert str(err.value) == f"{tmp_path / 'bad.ckpt'} does not fit KL16Tokenizer: 1 shape: post_quant_conv.weight (4, 8, 1, 1) != (4, 4, 1, 1)"


# ---------------------------------------------------------------------------------------------
# The recipe's train, data and sample sections


@pytest.mark.parametrize("kind, args, expected", [
    # main_ear.py: batch x GPUs x accumulation; --lr is the derived blr x batch / 256 unless given
    ("ear", dict(batch_size=32, world_size=8, accumulation_steps=2, blr=1e-4, lr=2e-4), dict(global_batch=512)),
    ("ear", dict(batch_size=32, world_size=8, accumulation_steps=2, blr=1e-4, lr=5e-4), dict(global_batch=512, lr=5e-4)),
    ("ear", dict(batch_size=32), dict(global_batch=32)),  # one process, no accumulation, no lr
    # main_mar.py: batch x GPUs (MAR has no accumulation, whatever the args carry)
    ("mar", dict(batch_size=16, world_size=32, blr=1e-4, lr=2e-4), dict(global_batch=512)),
    ("mar", dict(batch_size=16, world_size=4, accumulation_steps=2), dict(global_batch=64)),
])
def test_global_batch_and_lr_follow_the_official_scripts(kind, args, expected):
    from carl_image_ear.convert import train_section

    section = train_section(kind, argparse.Namespace(**args))
    assert {k: section[k] for k in ("global_batch", "lr") if k in section} == expected
    assert section["micro_batch"] == args["batch_size"]


def test_the_mar_recipe_samples_with_the_mar_readme_s_settings(converted_mar):
    """MAR samples at --temperature 1.0 with 256 steps (--num_iter) and the base CFG 2.9 at an
    unofficial width; EAR at its --infer_temperature 0.7 and 64 steps (the EAR recipes' setting)."""
    _, _, recipe = converted_mar
    from carl.config import load_recipe

    assert recipe.sample == dataclasses.replace(load_recipe("ear-b-in256").sample, temperature=1.0, num_steps=256, cfg=2.9)


def test_kl16_with_a_level_narrower_than_its_input_width_is_refused_as_a_config_error(tmp_path):
    """Its widths give ch_mult 0 for that level: the KL-16 config refuses it before any weights are compared."""
    from carl.errors import FieldError
    from carl_image_ear.convert import convert_kl16

    state = KL16Tokenizer(KL16Config(image_size=32, **KL16_SMALL)).state_dict()
    state["encoder.down.1.block.0.conv1.weight"] = torch.zeros(16, 32, 3, 3)  # 16 < ch = 32 channels
    torch.save({"model": state}, tmp_path / "narrow.ckpt")
    with pytest.raises(FieldError, match=r"^ch_mult\[1\] 0 is out of range; allowed: >= 1$"):
        convert_kl16(str(tmp_path / "narrow.ckpt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_recipe_samples_with_each_paper_s_settings(converted, tmp_path):
    """EAR: 64 steps, linear CFG 3.0, temperature 0.7; MAR: 256 steps, temperature 1.0, linear CFG
    2.9 / 3.0 / 3.2 for B / L / H (the official READMEs' evaluation commands)."""
    from carl_image_ear.convert import official_recipe, paper_sampling

    model, _, _ = converted
    ear = official_recipe("ear", model.config, None, tmp_path).sample
    assert (ear.num_steps, ear.cfg, ear.cfg_schedule, ear.temperature) == (64, 3.0, "linear", 0.7)
    mar = official_recipe("mar", model.config, None, tmp_path).sample
    assert (mar.num_steps, mar.cfg_schedule, mar.temperature) == (256, "linear", 1.0)
    assert [paper_sampling("mar", width)["cfg"] for width in (768, 1024, 1280)] == [2.9, 3.0, 3.2]
    assert [paper_sampling("ear", width)["cfg"] for width in (768, 1024, 1280)] == [3.0, 3.0, 3.0]


def test_heads_must_not_contradict_the_checkpoint_s_args():
    from carl_image_ear.convert import attention_heads

    args = argparse.Namespace(model="ear_huge")
    assert attention_heads(1280, args) == 16 and attention_heads(1280, args, heads=16) == 16
    with pytest.raises(WeightsError, match=r"--heads 20 contradicts the checkpoint, whose args name model 'ear_huge' "
                                           r"\(16 heads at width 1280\); leave --heads out"):
        attention_heads(1280, args, heads=20)
    assert attention_heads(1280, argparse.Namespace(model="ear_base"), heads=20) == 20  # args disagree with the weights
    assert attention_heads(96, None, heads=8) == 8  # an unofficial width: --heads decides
