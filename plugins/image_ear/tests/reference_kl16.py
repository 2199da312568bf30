"""An independent, functional reading of the KL-16 architecture described in
``data/kl16_vae_layout.txt``: it runs straight from a state dict with ``torch.nn.functional``
and plain matrix products, sharing no code with ``carl_image_ear.kl16``. The parity test holds
carl's modules to it."""

import torch
import torch.nn.functional as F


def conv(sd, name, x, stride=1, padding=None):
    weight = sd[f"{name}.weight"]
    pad = weight.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, weight, sd[f"{name}.bias"], stride=stride, padding=pad)


def norm(sd, name, x):
    return F.group_norm(x, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def swish(x):
    return x * torch.sigmoid(x)


def resnet(sd, name, x):
    h = conv(sd, f"{name}.conv1", swish(norm(sd, f"{name}.norm1", x)))
    h = conv(sd, f"{name}.conv2", swish(norm(sd, f"{name}.norm2", h)))
    if f"{name}.nin_shortcut.weight" in sd:
        x = conv(sd, f"{name}.nin_shortcut", x)
    return x + h


def attention(sd, name, x):
    b, c, hgt, wid = x.shape
    h = norm(sd, f"{name}.norm", x)
    q, k, v = (conv(sd, f"{name}.{p}", h).reshape(b, c, hgt * wid) for p in "qkv")
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) / c**0.5, dim=2)  # (b, queries, keys)
    out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, hgt, wid)
    return x + conv(sd, f"{name}.proj_out", out)


def count(sd, prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def middle(sd, name, x):
    return resnet(sd, f"{name}.block_2", attention(sd, f"{name}.attn_1", resnet(sd, f"{name}.block_1", x)))


def encode(sd, images):
    """Images in [-1, 1] -> (mean, clamped log-variance)."""
    x = conv(sd, "encoder.conv_in", images)
    for level in range(count(sd, "encoder.down.")):
        base = f"encoder.down.{level}"
        for i in range(count(sd, f"{base}.block.")):
            x = resnet(sd, f"{base}.block.{i}", x)
            if f"{base}.attn.{i}.q.weight" in sd:
                x = attention(sd, f"{base}.attn.{i}", x)
        if f"{base}.downsample.conv.weight" in sd:
            x = conv(sd, f"{base}.downsample.conv", F.pad(x, (0, 1, 0, 1)), stride=2, padding=0)
    x = middle(sd, "encoder.mid", x)
    x = conv(sd, "encoder.conv_out", swish(norm(sd, "encoder.norm_out", x)))
    mean, log_var = conv(sd, "quant_conv", x).chunk(2, dim=1)
    return mean, log_var.clamp(-30, 20)


def decode(sd, latent):
    """Unscaled latents -> images in [-1, 1]."""
    x = conv(sd, "decoder.conv_in", conv(sd, "post_quant_conv", latent))
    x = middle(sd, "decoder.mid", x)
    for level in reversed(range(count(sd, "decoder.up."))):
        base = f"decoder.up.{level}"
        for i in range(count(sd, f"{base}.block.")):
            x = resnet(sd, f"{base}.block.{i}", x)
        if f"{base}.upsample.conv.weight" in sd:
            x = conv(sd, f"{base}.upsample.conv", F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return conv(sd, "decoder.conv_out", swish(norm(sd, "decoder.norm_out", x)))
