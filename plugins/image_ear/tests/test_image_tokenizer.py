"""The autoencoder tokenizer on real images: training reconstructs held-out digits, and the
shipped mnist-ae tokenizer folder is what mnist-ear models."""

import math

import torch
from PIL import Image

from carl.config import load_recipe
from carl.plugins import pretrained_folders
from carl.tokenizers.pretrained import load_tokenizer
from carl.api import train
from carl_image_ear.mnist import mnist_arrays

def heldout(n: int = 500) -> torch.Tensor:
    images, _ = mnist_arrays("heldout")
    return torch.from_numpy(images[:n]).float()[:, None] / 255.0


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((x - y) ** 2).mean()))


def test_short_tokenizer_training_beats_the_mean_image(tmp_path):
    """60 steps of a small autoencoder on the embedded digits already beat predicting the mean
    digit (~11 dB) by a wide margin, and the run writes the reconstruction grid."""
    cfg = load_recipe("mnist-ae", ["tokenizer.widths=[8, 16, 16]", "train.max_steps=60", "train.lr=3.0e-3",
                                   "train.checkpoint_every=null", "train.tracker=none", "train.ema_decay=0.5",
                                   "eval.samples=200", "eval.normalize_samples=500"])
    out = train(cfg, output=tmp_path, progress=False)
    x = heldout()
    baseline = psnr(x.mean(0, keepdim=True).expand_as(x), x)
    tok = load_tokenizer(out)
    assert psnr(tok.decode(tok.encode(x)), x) > baseline + 3
    grid = Image.open(out / "reconstructions.png")
    assert grid.size == (10 * 32, 4 * 32)  # 2 pairs of rows of 10 digits, originals above reconstructions
    assert "held-out PSNR" in (out / "README.md").read_text()


def test_shipped_mnist_tokenizer_reconstructs_and_is_unit_scale():
    assert "mnist-ae" in pretrained_folders()
    tok = load_tokenizer("mnist-ae")
    x = heldout()
    assert (tok.num_tokens, tok.token_dim) == (49, 4)
    assert psnr(tok.decode(tok.encode(x)), x) > 18.0
    tokens = tok.train().encode(x)
    assert abs(float(tokens.mean())) < 0.1 and abs(float(tokens.std()) - 1) < 0.1
