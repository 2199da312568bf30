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


# ---------------------------------------------------------------------------------------------
# MAR (data/mar_b_layout.txt): encoder over [class tokens ; visible tokens], decoder with mask
# tokens, a position embedding added before the diffusion head, the ADM diffusion loss.


def mar_hidden_states(sd, tokens, mask, labels, heads):
    b, n, _ = tokens.shape
    x = linear(sd, "z_proj", tokens)
    buffer = sd["encoder_pos_embed_learned"].shape[1] - n
    x = torch.cat([sd["class_emb.weight"][labels][:, None].expand(-1, buffer, -1), x], dim=1)
    x = layer_norm(sd, "z_proj_ln", x + sd["encoder_pos_embed_learned"])
    visible = torch.cat([torch.ones(b, buffer, dtype=torch.bool), ~mask.bool()], dim=1)
    x = x[visible].reshape(b, -1, x.shape[-1])
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("encoder_blocks.")})):
        x = vit_block(sd, f"encoder_blocks.{i}", x, heads)
    x = linear(sd, "decoder_embed", layer_norm(sd, "encoder_norm", x))
    full = sd["mask_token"].expand(b, buffer + n, -1).clone()
    full[visible] = x.reshape(-1, x.shape[-1])
    x = full + sd["decoder_pos_embed_learned"]
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})):
        x = vit_block(sd, f"decoder_blocks.{i}", x, heads)
    return layer_norm(sd, "decoder_norm", x)[:, buffer:] + sd["diffusion_pos_embed_learned"]


def cosine_tables(steps=1000):
    import math

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)], dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post_var = betas * (1 - prev) / (1 - ab)
    return dict(betas=betas, ab=ab, prev=prev, post_log_var=torch.log(torch.cat([post_var[1:2], post_var[1:]])))


def denoiser(sd, x, t, c):
    p = "diffloss.net"
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = linear(sd, f"{p}.time_embed.mlp.2", F.silu(linear(sd, f"{p}.time_embed.mlp.0", torch.cat([torch.cos(args), torch.sin(args)], -1))))
    y = temb + linear(sd, f"{p}.cond_embed", c)
    h = linear(sd, f"{p}.input_proj", x)
    for i in range(len({k.split(".")[3] for k in sd if k.startswith(f"{p}.res_blocks.")})):
        b = f"{p}.res_blocks.{i}"
        shift, scale, gate = linear(sd, f"{b}.adaLN_modulation.1", F.silu(y)).chunk(3, dim=-1)
        h = h + gate * linear(sd, f"{b}.mlp.2", F.silu(linear(sd, f"{b}.mlp.0", layer_norm(sd, f"{b}.in_ln", h) * (1 + scale) + shift)))
    shift, scale = linear(sd, f"{p}.final_layer.adaLN_modulation.1", F.silu(y)).chunk(2, dim=-1)
    return linear(sd, f"{p}.final_layer.linear", F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale) + shift)


def discretized_nll(x, mean, log_scale):
    """ADM's discretised Gaussian decoder NLL (bins of 2/255 on [-1, 1], open edge bins), in nats."""
    def cdf(v):  # ADM's tanh approximation of the normal CDF
        return 0.5 * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (v + 0.044715 * v**3)))

    upper, lower = cdf((x - mean + 1 / 255) * torch.exp(-log_scale)), cdf((x - mean - 1 / 255) * torch.exp(-log_scale))
    log_p = torch.where(x < -0.999, torch.log(upper.clamp(min=1e-12)),
                        torch.where(x > 0.999, torch.log((1 - lower).clamp(min=1e-12)), torch.log((upper - lower).clamp(min=1e-12))))
    return -log_p


def mar_loss(sd, hidden, tokens, mask, t, noise, batch_mul):
    """MAR's loss (mse + the learned variance's term: the KL for t > 0, the discretised decoder
    NLL at t = 0) over masked tokens.
    ``t`` and ``noise`` cover every token: ``(batch_mul * B * N,)`` and ``(batch_mul * B * N, D)``."""
    tab = cosine_tables()
    d = tokens.shape[-1]
    z = hidden.reshape(-1, hidden.shape[-1]).repeat(batch_mul, 1)
    x0 = tokens.reshape(-1, d).repeat(batch_mul, 1)
    weight = mask.reshape(-1).repeat(batch_mul)

    def at(table):  # like ADM: every coefficient in float64, then read at t as float32
        return table[t].float()[:, None]

    ab, prev, beta = tab["ab"], tab["prev"], tab["betas"]
    xt = at(ab.sqrt()) * x0 + at((1 - ab).sqrt()) * noise
    eps, v = denoiser(sd, xt, t, z).chunk(2, dim=-1)
    mse = ((noise - eps) ** 2).mean(-1)
    c1, c2 = at(beta * prev.sqrt() / (1 - ab)), at((1 - prev) * (1 - beta).sqrt() / (1 - ab))
    pred_x0 = at((1 / ab).sqrt()) * xt - at((1 / ab - 1).sqrt()) * eps.detach()
    true_mean, model_mean = c1 * x0 + c2 * xt, c1 * pred_x0 + c2 * xt
    frac = (v + 1) / 2
    true_lv = at(tab["post_log_var"])
    model_lv = frac * at(torch.log(beta)) + (1 - frac) * true_lv
    kl = 0.5 * (-1 + model_lv - true_lv + torch.exp(true_lv - model_lv) + (true_mean - model_mean) ** 2 * torch.exp(-model_lv))
    vb = torch.where(t == 0, discretized_nll(x0, model_mean, 0.5 * model_lv).mean(-1), kl.mean(-1))
    per_row = mse + vb / torch.log(torch.tensor(2.0))
    return (per_row * weight).sum() / weight.sum()
