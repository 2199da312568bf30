"""Sample quality of an MNIST model: classifier accuracy and a feature Frechet distance.

    python benchmarks/mnist_quality.py runs/mnist-ear [--per-class 100] [--cfg 3.0]

A small CNN is trained on the 2,000 held-out digits (which the generative model never saw) and
checked on the 8,000 training digits. Then the model generates ``per-class`` samples of each
digit, and the script reports

* accuracy: the share of generated samples the CNN classifies as their conditioning label;
* FD(gen, real): the Frechet distance between the CNN's penultimate features of generated
  digits and of real held-out digits, next to FD(real, real) between two halves of the held-out
  digits (same sample sizes), the floor a perfect generator would reach.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from carl.model import load_model
from carl_image_ear.mnist import mnist_arrays


class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255).unsqueeze(1)  # (B, 1, 28, 28) in [0, 1]


def random_shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in x and y (vectorized, zero padded)."""
    padded = F.pad(x, (pixels,) * 4)
    dx, dy = torch.randint(0, 2 * pixels + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + 28, dx : dx + 28]


def train_classifier(seed: int = 0, epochs: int = 20) -> DigitCNN:
    images, labels = mnist_arrays("heldout")
    x, y = as_tensor(images), torch.from_numpy(labels).long()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cnn = DigitCNN()
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    steps_per_epoch = (len(x) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(cnn(random_shift(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return cnn.eval()


@torch.no_grad()
def predict(cnn: DigitCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.cat([cnn.features(x[i : i + 500]) for i in range(0, len(x), 500)])
    return cnn.head(feats).argmax(-1), feats


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (float64)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)) = sum of square roots of the eigenvalues of S_a S_b (real, >= 0 up to rounding)
    root = torch.linalg.eigvals(cov_a @ cov_b).real.clamp_min(0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * root).item()


@torch.no_grad()
def generate_digits(model, per_class: int, *, cfg: float, temperature: float, steps: int, seed: int, batch: int = 250):
    """``10 * per_class`` samples in [0, 1], ``(B, 1, 28, 28)``, with their labels; seconds per image."""
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    start, out = time.perf_counter(), []
    for i in range(0, len(labels), batch):
        out.append(model.generate(labels[i : i + batch], num_steps=steps, cfg=cfg, temperature=temperature, generator=g))
    seconds = (time.perf_counter() - start) / len(labels)
    return torch.cat(out).clamp(0, 1).cpu(), labels, seconds


def evaluate(model, cnn: DigitCNN, *, per_class: int, cfg: float, temperature: float, steps: int, seed: int = 0) -> dict:
    images, _ = mnist_arrays("heldout")
    _, real_feats = predict(cnn, as_tensor(images))
    # Interleaved halves: the archive is grouped by label, so contiguous halves would split the classes.
    half_a, half_b = real_feats[0::2], real_feats[1::2]
    samples, labels, seconds = generate_digits(model, per_class, cfg=cfg, temperature=temperature, steps=steps, seed=seed)
    pred, gen_feats = predict(cnn, samples)
    n = min(len(gen_feats), len(half_a))
    pick = torch.randperm(len(gen_feats), generator=torch.Generator().manual_seed(seed))[:n]  # all classes
    return {
        "accuracy": (pred == labels).float().mean().item(),
        "fd_gen_real": frechet_distance(gen_feats[pick], half_a[:n]),
        "fd_real_real": frechet_distance(half_b[:n], half_a[:n]),
        "seconds_per_image": seconds,
        "samples": samples,
    }


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a model folder trained on MNIST (e.g. runs/mnist-ear) or a Hub repo id")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--cfg", type=floats, default=None, help="default: the recipe's; a comma list sweeps")
    parser.add_argument("--temperature", type=floats, default=None, help="default: the recipe's; a comma list sweeps")
    parser.add_argument("--steps", type=ints, default=None, help="default: the recipe's; a comma list sweeps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model, recipe = load_model(args.checkpoint)
    model.to(args.device)
    s = recipe.sample
    cfgs = [s.cfg] if args.cfg is None else args.cfg
    temperatures = [s.temperature] if args.temperature is None else args.temperature
    step_counts = [s.num_steps] if args.steps is None else args.steps

    start = time.perf_counter()
    cnn = train_classifier()
    train_images, train_labels = mnist_arrays("train")
    pred, _ = predict(cnn, as_tensor(train_images))
    real_acc = (pred == torch.from_numpy(train_labels)).float().mean().item()
    print(f"classifier: trained on 2000 held-out digits in {time.perf_counter() - start:.1f}s, "
          f"accuracy {real_acc:.2%} on the 8000 real training digits")

    print(f"model {args.checkpoint}: {10 * args.per_class} samples per row")
    print("| steps | cfg | temperature | accuracy on generated | FD(gen, real) | FD(real, real) | s / image |")
    print("|---|---|---|---|---|---|---|")
    for steps, cfg, temperature in itertools.product(step_counts, cfgs, temperatures):
        r = evaluate(model, cnn, per_class=args.per_class, cfg=cfg, temperature=temperature, steps=steps, seed=args.seed)
        print(f"| {steps} | {cfg:g} | {temperature:g} | {r['accuracy']:.2%} | {r['fd_gen_real']:.2f} "
              f"| {r['fd_real_real']:.2f} | {r['seconds_per_image']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
