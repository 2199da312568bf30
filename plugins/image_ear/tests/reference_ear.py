"""An independent, functional reading of the official EAR forward pass (``data/ear_b_layout.txt``):
decoder-only ViT over [64 class tokens ; tokens], masked positions replaced by the mask token,
energy loss of the MLP generator on the masked positions. It runs from an official-layout state
dict with plain tensor operations and shares no code with carl."""

import torch
import torch.nn.functional as F


def linear(sd, name, x):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def layer_norm(sd, name, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def vit_block(sd, name, x, heads):
    b, n, c = x.shape
    qkv = linear(sd, f"{name}.attn.qkv", layer_norm(sd, f"{name}.norm1", x))
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1)
    x = x + linear(sd, f"{name}.attn.proj", (weights @ v).transpose(1, 2).reshape(b, n, c))
    return x + linear(sd, f"{name}.mlp.fc2", F.gelu(linear(sd, f"{name}.mlp.fc1", layer_norm(sd, f"{name}.norm2", x))))


def hidden_states(sd, tokens, mask, labels, heads):
    """``tokens (B, N, D)``, ``mask (B, N)`` 1 = to predict, ``labels (B,)`` -> ``(B, N, C)`` (eval mode)."""
    x = linear(sd, "z_proj", tokens)
    buffer = sd["decoder_pos_embed_learned"].shape[1] - tokens.shape[1]
    x = torch.where(mask[..., None].bool(), sd["mask_token"], x)
    classes = sd["class_emb.weight"][labels][:, None].expand(-1, buffer, -1)
    x = torch.cat([classes, x], dim=1) + sd["decoder_pos_embed_learned"]
    depth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    for i in range(depth):
        x = vit_block(sd, f"decoder_blocks.{i}", x, heads)
    return layer_norm(sd, "decoder_norm", x)[:, buffer:]


def generator(sd, z, noise, temperature=1.0):
    """The MLP generator ``scoreloss.net``; the shift of its res blocks scaled by ``temperature``."""
    p = "scoreloss.net"
    x, y = linear(sd, f"{p}.input_proj", z), linear(sd, f"{p}.noise_embed", noise)
    depth = len({k.split(".")[3] for k in sd if k.startswith(f"{p}.res_blocks.")})
    for i in range(depth):
        b = f"{p}.res_blocks.{i}"
        shift, scale, gate = linear(sd, f"{b}.adaLN_modulation.1", F.silu(y)).chunk(3, dim=-1)
        h = layer_norm(sd, f"{b}.in_ln", x) * (1 + scale) + temperature * shift
        x = x + gate * linear(sd, f"{b}.mlp.2", F.silu(linear(sd, f"{b}.mlp.0", h)))
    shift, scale = linear(sd, f"{p}.final_layer.adaLN_modulation.1", F.silu(y)).chunk(2, dim=-1)
    return linear(sd, f"{p}.final_layer.linear", F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift)


def loss(sd, hidden, tokens, mask, noise, batch_mul, alpha=1.0):
    """EAR's loss over every token, weighted by the mask: ``noise (2 * batch_mul * B * N, E)``."""
    d = tokens.shape[-1]
    z = hidden.reshape(-1, hidden.shape[-1]).repeat(batch_mul, 1)
    target = tokens.reshape(-1, d).repeat(batch_mul, 1)
    weight = mask.reshape(-1).repeat(batch_mul)
    first, second = generator(sd, z.repeat(2, 1), noise).chunk(2)

    def dist(a, b):
        return torch.linalg.norm(a - b, dim=-1) ** alpha

    per_row = dist(first, target) + dist(second, target) - dist(first, second)
    return (per_row * weight).sum() / weight.sum()
