"""Official EAR and MAR checkpoints in their key layout, for the conversion tests: small random
ones, and (``seed`` None) official-size ones of meta tensors read against the layouts in ``data/``."""

import re
from pathlib import Path

import torch

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
