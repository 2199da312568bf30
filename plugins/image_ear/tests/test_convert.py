"""Official EAR checkpoints into carl: strict reading, shape inference, and numerical parity of
hidden states and loss with an independent reading of the official architecture."""

import argparse
import dataclasses

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
from official_checkpoints import BUFFER, D, DEPTH, HEAD_W, HEADS, N, NOISE, WIDTH, official_ear_state, official_mar_state


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
# Checkpoints and VAEs that do not fit (the official sizes: test_convert_official_sizes.py)


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
