"""Official EAR and MAR checkpoints and MAR's KL-16 weights into carl.

``carl convert ear|mar checkpoint-last.pth OUT --vae kl16.ckpt`` writes a carl model folder (EMA
weights by default) that ``carl sample`` uses directly; ``carl convert kl16 kl16.ckpt OUT``
writes the tokenizer as safetensors. Checkpoints are read with ``weights_only=True`` (the
``argparse.Namespace`` of the training arguments is allow-listed, nothing else is unpickled);
sizes come from the tensor shapes, the training settings from the arguments when present.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from carl.config import ModelConfig, RecipeConfig, from_dict, to_dict
from carl.model import ContinuousAR
from carl.errors import WeightsError
from carl.weights import load_state_file, load_strict, resolve_weights

# The official model sizes (models/ear.py, models/mar.py): name -> (width, attention heads).
# Heads change no tensor shape, so they cannot be read from the weights.
OFFICIAL_SIZES = {"ear_base": (768, 12), "ear_large": (1024, 16), "ear_huge": (1280, 16),
                  "mar_base": (768, 12), "mar_large": (1024, 16), "mar_huge": (1280, 16)}
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}
# How each paper samples its checkpoints (the official READMEs' evaluation commands): EAR all sizes
# 64 steps, CFG 3.0 linear, temperature 0.7; MAR 256 steps, temperature 1.0, CFG 2.9 / 3.0 / 3.2 for
# B / L / H (by width). Other widths get the base settings.
PAPER_SAMPLING = {"ear": {"num_steps": 64, "cfg": 3.0, "temperature": 0.7},
                  "mar": {"num_steps": 256, "cfg": 2.9, "temperature": 1.0}}
MAR_CFG_BY_WIDTH = {768: 2.9, 1024: 3.0, 1280: 3.2}
DEFAULT_DATA = "data/imagenet"  # the official --data_path default (ImageNet: <path>/train/<class>/<image>)
# official EAR name prefix -> carl name prefix (the rest of each key is the same)
EAR_NAMES = [
    ("class_emb.", "conditioner.class_emb."), ("fake_latent", "conditioner.fake_latent"),
    ("mask_token", "backbone.mask_token"), ("decoder_pos_embed_learned", "backbone.pos_embed"),
    ("z_proj.", "backbone.token_proj."), ("decoder_blocks.", "backbone.blocks."),
    ("decoder_norm.", "backbone.norm."), ("scoreloss.net.", "score.net."),
]

MAR_NAMES = [
    ("class_emb.", "conditioner.class_emb."), ("fake_latent", "conditioner.fake_latent"),
    ("mask_token", "backbone.mask_token"), ("encoder_pos_embed_learned", "backbone.encoder_pos_embed"),
    ("decoder_pos_embed_learned", "backbone.pos_embed"), ("diffusion_pos_embed_learned", "backbone.head_pos_embed"),
    ("z_proj_ln.", "backbone.token_norm."), ("z_proj.", "backbone.token_proj."),
    ("encoder_blocks.", "backbone.encoder_blocks."), ("encoder_norm.", "backbone.encoder_norm."),
    ("decoder_embed.", "backbone.decoder_embed."), ("decoder_blocks.", "backbone.blocks."),
    ("decoder_norm.", "backbone.norm."), ("diffloss.net.", "score.net."),
]


def read_official(path: Path) -> tuple[dict, argparse.Namespace | None]:
    """The ``model`` and ``model_ema`` state dicts and the training arguments of an official
    checkpoint, unpickling nothing but tensors, containers and ``argparse.Namespace``."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise WeightsError(f"{path} is not an official checkpoint (no 'model' state dict)")
    return checkpoint, checkpoint.get("args")


def count_indexed(state: dict, prefix: str) -> int:
    return len({m[1] for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def kl16_options(state: dict) -> dict:
    """The KL-16 architecture of a state dict, read from its shapes."""
    levels = count_indexed(state, "encoder.down.")
    ch = state["encoder.conv_in.weight"].shape[0]
    return {
        "ch": ch,
        "ch_mult": [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
        "num_res_blocks": count_indexed(state, "encoder.down.0.block."),
        "attn_levels": [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state],
        "z_channels": state["post_quant_conv.weight"].shape[0],
    }


def attention_heads(width: int, args: argparse.Namespace | None, heads: int | None = None) -> int:
    """The attention heads of an official checkpoint: ``heads`` when given, else those of the
    official size its ``args.model`` names, else those of the official size of that width.

    Raises:
        WeightsError: the count cannot be known (an unofficial width and no ``--heads``), or the
            arguments contradict the weights.
    """
    name = getattr(args, "model", None)
    if heads is not None:
        if heads < 1 or width % heads:
            raise WeightsError(f"--heads {heads} does not divide the checkpoint's width {width}")
        official_width, official_heads = OFFICIAL_SIZES.get(name, (None, None))
        if official_width == width and heads != official_heads:
            raise WeightsError(f"--heads {heads} contradicts the checkpoint, whose args name model '{name}' "
                               f"({official_heads} heads at width {width}); leave --heads out")
        return heads
    if name is not None:
        if name not in OFFICIAL_SIZES:
            raise WeightsError(f"the checkpoint's args name model '{name}', not an official size "
                               f"({', '.join(OFFICIAL_SIZES)}): give the attention heads with --heads")
        official_width, official_heads = OFFICIAL_SIZES[name]
        if official_width != width:
            raise WeightsError(f"the checkpoint's args name model '{name}' (width {official_width}) but its weights have "
                               f"width {width}: give the attention heads with --heads")
        return official_heads
    if width not in HEADS_BY_WIDTH:
        raise WeightsError(f"the checkpoint names no official model (args.model) and width {width} is not an official size "
                           f"({', '.join(map(str, HEADS_BY_WIDTH))}): the attention heads cannot be read from the "
                           f"weights; give them with --heads")
    return HEADS_BY_WIDTH[width]


def ear_model_config(state: dict, args: argparse.Namespace | None, vae: dict, heads: int | None = None) -> ModelConfig:
    """carl's model config for an official EAR state dict (sizes from shapes, settings from args)."""
    width, token_dim = state["z_proj.weight"].shape
    depth = count_indexed(state, "decoder_blocks.")
    heads = attention_heads(width, args, heads)
    positions = state["decoder_pos_embed_learned"].shape[1]
    image_size = getattr(args, "img_size", 256)
    buffer = getattr(args, "buffer_size", positions - (image_size // 16) ** 2)
    return from_dict(ModelConfig, {
        "tokenizer": {"name": "kl16", "image_size": image_size, **vae},
        "conditioner": {"name": "class", "num_classes": state["class_emb.weight"].shape[0], "buffer": buffer,
                        "label_drop": getattr(args, "label_drop_prob", 0.1)},
        "order": {"name": "masked", "mask_ratio_min": getattr(args, "mask_ratio_min", 0.7)},
        "backbone": {"width": width, "depth": depth, "heads": heads,
                     "mlp_ratio": state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / width,
                     "dropout": getattr(args, "proj_dropout", 0.1), "attn_dropout": getattr(args, "attn_dropout", 0.1)},
        "score": {"name": "energy", "alpha": float(getattr(args, "alpha", 1.0)), "num_samples": 2,
                  "batch_mul": getattr(args, "score_batch_mul", 2),
                  "train_temperature": float(getattr(args, "train_temperature", 1.0)),
                  "depth": count_indexed(state, "scoreloss.net.res_blocks."),
                  "width": state["scoreloss.net.input_proj.weight"].shape[0],
                  "noise_dim": state["scoreloss.net.noise_embed.weight"].shape[1]},
    })


def mar_model_config(state: dict, args: argparse.Namespace | None, vae: dict, heads: int | None = None) -> ModelConfig:
    """carl's model config for an official MAR state dict: the encoder-decoder backbone and the diffusion head."""
    width, token_dim = state["z_proj.weight"].shape
    image_size = getattr(args, "img_size", 256)
    return from_dict(ModelConfig, {
        "tokenizer": {"name": "kl16", "image_size": image_size, **vae},
        "conditioner": {"name": "class", "num_classes": state["class_emb.weight"].shape[0],
                        "buffer": getattr(args, "buffer_size", state["encoder_pos_embed_learned"].shape[1] - (image_size // 16) ** 2),
                        "label_drop": getattr(args, "label_drop_prob", 0.1)},
        "order": {"name": "masked", "mask_ratio_min": getattr(args, "mask_ratio_min", 0.7)},
        "backbone": {"width": width, "depth": count_indexed(state, "decoder_blocks."),
                     "encoder_depth": count_indexed(state, "encoder_blocks."),
                     "heads": attention_heads(width, args, heads),
                     "mlp_ratio": state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / width,
                     "dropout": getattr(args, "proj_dropout", 0.1), "attn_dropout": getattr(args, "attn_dropout", 0.1)},
        "score": {"name": "diffusion", "depth": count_indexed(state, "diffloss.net.res_blocks."),
                  "width": state["diffloss.net.cond_embed.weight"].shape[0],
                  "batch_mul": getattr(args, "diffusion_batch_mul", 4),
                  "sample_steps": int(getattr(args, "num_sampling_steps", 100))},
    })


def rename(state: dict, names: list[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state.items():
        new = next((dst + key[len(src):] for src, dst in names if key.startswith(src)), None)
        if new is None:
            raise WeightsError(f"unexpected key in the official checkpoint: {key}")
        out[new] = value
    return out


# carl's train key <- the official training argument (main_ear.py / main_mar.py)
TRAIN_ARGS = {"seed": "seed", "micro_batch": "batch_size", "epochs": "epochs", "base_lr": "blr", "lr_schedule": "lr_schedule",
              "warmup_epochs": "warmup_epochs", "min_lr": "min_lr", "weight_decay": "weight_decay", "grad_clip": "grad_clip",
              "ema_decay": "ema_rate", "head_lr_scale": "score_lrscale"}


def train_section(kind: str, args: argparse.Namespace | None) -> dict:
    """The recipe's ``train`` section from the checkpoint's training arguments (those of its last
    launch), key by key where present; carl's defaults for the rest."""
    if args is None:
        return {}
    section = {key: getattr(args, name) for key, name in TRAIN_ARGS.items() if getattr(args, name, None) is not None}
    if "train_temperature" in vars(args):
        section["train_temperature"] = [[0, float(args.train_temperature)]]
    if "micro_batch" in section:
        accumulation = getattr(args, "accumulation_steps", 1) if kind == "ear" else 1  # MAR does not accumulate
        section["global_batch"] = section["micro_batch"] * getattr(args, "world_size", 1) * accumulation
        # main_*.py overwrites args.lr with blr x batch / 256 when --lr is not given: keep only a real --lr
        lr, blr = getattr(args, "lr", None), section.get("base_lr")
        if lr is not None and not (blr is not None and math.isclose(lr, blr * section["global_batch"] / 256)):
            section["lr"] = lr
    return section


def paper_sampling(kind: str, width: int) -> dict:
    """Steps, CFG and temperature with which the paper evaluates a checkpoint of this kind and width."""
    settings = dict(PAPER_SAMPLING[kind])
    if kind == "mar":
        settings["cfg"] = MAR_CFG_BY_WIDTH.get(width, settings["cfg"])
    return settings


def official_recipe(kind: str, config: ModelConfig, args: argparse.Namespace | None, output: Path) -> RecipeConfig:
    """The recipe of a converted checkpoint: its model, its data (ImageNet at the official
    ``--data_path``), its training settings from its args, and the papers' sampling settings."""
    return from_dict(RecipeConfig, {
        "model": to_dict(config),
        "data": {"name": "images", "source": getattr(args, "data_path", None) or DEFAULT_DATA, "split": "train",
                 "image_size": config.tokenizer.options.image_size, "channels": 3},
        "train": train_section(kind, args),
        "sample": {**paper_sampling(kind, config.backbone.width), "cfg_schedule": "linear", "rows": 4, "per_row": 8},
        "output": str(output),
    })


def convert_official(kind: str, checkpoint: Path, output: Path, vae: str, use_ema: bool = True, heads: int | None = None) -> Path:
    """Write a carl model folder for an official ``ear`` or ``mar`` checkpoint and the KL-16 weights ``vae``;
    ``heads`` gives the attention heads of a checkpoint of an unofficial width without training args."""
    official, args = read_official(checkpoint)
    key = "model_ema" if use_ema and "model_ema" in official else "model"
    state = official[key]
    make_config, names = {"ear": (ear_model_config, EAR_NAMES), "mar": (mar_model_config, MAR_NAMES)}[kind]
    vae_path = resolve_weights(vae, default_filename="kl16.ckpt")
    vae_state = load_state_file(vae_path)
    config = make_config(state, args, kl16_options(vae_state), heads)
    model = ContinuousAR(config)
    load_strict(model.tokenizer, vae_state, source=vae_path)
    carl_state = rename(state, names)
    carl_state.update({f"tokenizer.{k}": v for k, v in model.tokenizer.state_dict().items()})
    load_strict(model, carl_state, source=f"{checkpoint} ({key})")
    model.save_pretrained(output, recipe=official_recipe(kind, config, args, output))  # the same complete folder as a training run's
    return output


def convert_kl16(checkpoint: str, output: Path) -> Path:
    """MAR's ``kl16.ckpt`` (or any KL-16 reference) as ``OUT/kl16.safetensors``, checked strictly."""
    from carl_image_ear.kl16 import KL16Config, KL16Tokenizer

    path = resolve_weights(checkpoint, default_filename="kl16.ckpt")
    state = load_state_file(path)
    tokenizer = KL16Tokenizer(KL16Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in kl16_options(state).items()}))
    load_strict(tokenizer, state, source=path)
    output.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tokenizer.state_dict().items()}, output / "kl16.safetensors")
    return output / "kl16.safetensors"
