"""Sample quality of an MNIST model: classifier accuracy and a feature Frechet distance.

    python benchmarks/mnist_quality.py runs/mnist-ear [--per-class 100] [--cfg 3.0]
    python benchmarks/mnist_quality.py runs/mnist-ear --reference tuning --cfg 2,3,4 --temperature 0.7,1
    python benchmarks/mnist_quality.py runs/mnist-ear --record      # the figures go into results.json and the card

A small CNN is trained on the 2,000 held-out digits (which the generative model never saw) and
checked on the 8,000 training digits. Then the model generates ``per-class`` samples of each
digit, and the script reports

* accuracy: the share of generated samples the CNN classifies as their conditioning label;
* FD(gen, real): the Frechet distance between the CNN's penultimate features of generated
  digits and of real held-out digits, next to FD(real, real) between two halves of the held-out
  digits (same sample sizes);
* the floors a faithful generator can reach: the accuracy and FD of as many real digits the CNN
  never trained on (training digits), as they are and through the model's tokenizer. They sit
  well above FD(real, real), which compares digits the CNN was trained on: its features of its
  own training digits are tighter than of any others, and generated digits are never among them.

Sampling settings are chosen with ``--reference tuning``: the classifier and the FD reference
are then 2,000 of the 8,000 *training* digits (a fixed draw, seed 1), so the benchmark's held-out
digits never decide a setting; the figures a recipe reports come from the default ``heldout``.
Comma lists sweep the AR steps, CFG, CFG schedule, temperature and, for the diffusion and flow
heads, the head's own sampler (``--head-steps``, ``--solver``; no retraining).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from carl_image_ear.mnist import mnist_arrays
from torch import nn

from carl.layout import RESULTS_FILE
from carl.model import load_model
from carl.model.folder import local_folder, record_results


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


REFERENCES = ("heldout", "tuning")
TUNING = 2000  # training digits that serve as the tuning reference


def reference_digits(reference: str = "heldout", complement: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The digits the classifier trains on and the FD compares with: the 2,000 held-out digits,
    or (``tuning``) a fixed draw of 2,000 training digits; ``complement``: the other digits of
    the 10,000 for ``heldout``'s training split, of the training split for ``tuning``."""
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    if reference == "heldout":
        return mnist_arrays("train" if complement else "heldout")
    images, labels = mnist_arrays("train")
    pick = np.random.default_rng(1).permutation(len(images))
    index = np.sort(pick[TUNING:] if complement else pick[:TUNING])
    return images[index], labels[index]


def train_classifier(seed: int = 0, epochs: int = 20, reference: str = "heldout") -> DigitCNN:
    images, labels = reference_digits(reference)
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
def generate_digits(model, per_class: int, *, cfg: float, temperature: float, steps: int, seed: int, batch: int = 250,
                    cfg_schedule: str = "linear"):
    """``10 * per_class`` samples in [0, 1], ``(B, 1, 28, 28)``, with their labels; seconds per image."""
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    start, out = time.perf_counter(), []
    for i in range(0, len(labels), batch):
        out.append(model.generate(labels[i : i + batch], num_steps=steps, cfg=cfg, cfg_schedule=cfg_schedule,
                                  temperature=temperature, generator=g))
    seconds = (time.perf_counter() - start) / len(labels)
    return torch.cat(out).clamp(0, 1).cpu(), labels, seconds


def mixed(rows: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` of ``rows`` in a seeded random order: the digits are grouped by label, so a prefix of
    fewer than all of them would hold only the first digits."""
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:n]]


def reference_halves(cnn: DigitCNN, reference: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The CNN features of the reference digits in two interleaved halves (the archive is grouped
    by label, so contiguous halves would split the classes); FD(gen, real) compares with the first."""
    images, _ = reference_digits(reference)
    _, real_feats = predict(cnn, as_tensor(images))
    return real_feats[0::2], real_feats[1::2]


@torch.no_grad()
def unseen_floors(model, cnn: DigitCNN, *, reference: str = "heldout", num: int = 1000, seed: int = 0) -> dict:
    """The figures a faithful generator can reach: ``num`` real digits the CNN never trained on
    (the reference's complement), as they are and decoded from the model's tokens of them.

    FD(real, real) compares two halves of the reference, digits the CNN was trained on, and the
    CNN's features sit closer together on its own training digits than on any others: the
    generator's samples are never among them, so their floor is this one, not FD(real, real)."""
    images, labels = reference_digits(reference, complement=True)
    pick = np.sort(np.random.default_rng(seed).permutation(len(images))[:num])
    real, labels = as_tensor(images[pick]), torch.from_numpy(labels[pick]).long()
    tokenizer = model.tokenizer
    device = next(model.parameters()).device
    decoded = torch.cat([tokenizer.decode(tokenizer.encode(real[i : i + 500].to(device))).float().clamp(0, 1).cpu()
                         for i in range(0, len(real), 500)])
    half_a, _ = reference_halves(cnn, reference)
    floors = {}
    for name, x in (("real", real), ("reconstructed", decoded)):
        pred, feats = predict(cnn, x)
        n = min(len(feats), len(half_a))
        floors[name] = {"accuracy": (pred == labels).float().mean().item(),
                        "fd": frechet_distance(mixed(feats, n, seed), mixed(half_a, n, seed))}
    return floors


def evaluate(model, cnn: DigitCNN, *, per_class: int, cfg: float, temperature: float, steps: int, seed: int = 0,
             cfg_schedule: str = "linear", reference: str = "heldout") -> dict:
    half_a, half_b = reference_halves(cnn, reference)
    samples, labels, seconds = generate_digits(model, per_class, cfg=cfg, temperature=temperature, steps=steps, seed=seed,
                                               cfg_schedule=cfg_schedule)
    pred, gen_feats = predict(cnn, samples)
    n = min(len(gen_feats), len(half_a))
    real_a, real_b = mixed(half_a, n, seed), mixed(half_b, n, seed)  # with n = all of a half, the same sets as before
    return {
        "accuracy": (pred == labels).float().mean().item(),
        "fd_gen_real": frechet_distance(mixed(gen_feats, n, seed), real_a),
        "fd_real_real": frechet_distance(real_b, real_a),
        "seconds_per_image": seconds,
        "samples": samples,
    }


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",")]


def head_samplers(score, head_steps: list[int] | None, solvers: list[str] | None) -> list[tuple[int | None, str | None]]:
    """The (head steps, solver) pairs to sweep; ``[(None, None)]`` keeps the model's own sampler."""
    if head_steps is None and solvers is None:
        return [(None, None)]
    if not hasattr(score, "set_sampler"):
        raise SystemExit(f"--head-steps/--solver: the {type(score).__name__} head has no sampler options")
    return list(itertools.product(head_steps or [None], solvers or [None]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a model folder trained on MNIST (e.g. runs/mnist-ear) or a Hub repo id")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--cfg", type=floats, default=None, help="default: the recipe's; a comma list sweeps")
    parser.add_argument("--temperature", type=floats, default=None, help="default: the recipe's; a comma list sweeps")
    parser.add_argument("--steps", type=ints, default=None, help="default: the recipe's; a comma list sweeps")
    parser.add_argument("--cfg-schedule", type=words, default=None, help="linear, constant; default: the recipe's")
    parser.add_argument("--head-steps", type=ints, default=None, help="diffusion/flow head: sampling steps (a list sweeps)")
    parser.add_argument("--solver", type=words, default=None, help="flow head: euler, midpoint (a list sweeps)")
    parser.add_argument("--reference", default="heldout", choices=REFERENCES,
                        help="heldout: the benchmark; tuning: 2,000 training digits, to choose settings on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", action="store_true",
                        help="add each row's accuracy and FD, with its settings, to the model folder's results.json and card")
    args = parser.parse_args()

    if args.record:
        local_folder(args.checkpoint)  # a local model folder, checked before minutes of sampling
    model, recipe = load_model(args.checkpoint)
    model.to(args.device)
    s = recipe.sample
    cfgs = [s.cfg] if args.cfg is None else args.cfg
    temperatures = [s.temperature] if args.temperature is None else args.temperature
    step_counts = [s.num_steps] if args.steps is None else args.steps
    schedules = [s.cfg_schedule] if args.cfg_schedule is None else args.cfg_schedule
    samplers = head_samplers(model.score, args.head_steps, args.solver)

    start = time.perf_counter()
    cnn = train_classifier(reference=args.reference)
    other_images, other_labels = reference_digits(args.reference, complement=True)
    pred, _ = predict(cnn, as_tensor(other_images))
    real_acc = (pred == torch.from_numpy(other_labels)).float().mean().item()
    print(f"classifier: trained on the {args.reference} reference ({TUNING} digits) in {time.perf_counter() - start:.1f}s, "
          f"accuracy {real_acc:.2%} on {len(other_images)} other real digits")
    floors = unseen_floors(model, cnn, reference=args.reference, num=10 * args.per_class, seed=args.seed)
    print(f"floors: {10 * args.per_class} real digits the classifier never trained on: accuracy {floors['real']['accuracy']:.2%}, "
          f"FD {floors['real']['fd']:.2f}; the same digits through the model's tokenizer: accuracy "
          f"{floors['reconstructed']['accuracy']:.2%}, FD {floors['reconstructed']['fd']:.2f} (FD(real, real) compares "
          f"digits the classifier trained on)")
    if args.record:
        floor_settings = f"{10 * args.per_class} real digits unseen by the classifier, {args.reference} reference, seed {args.seed}"
        record_results(args.checkpoint, {f"MNIST FD floor ({floor_settings})": round(floors["real"]["fd"], 2),
                                         f"MNIST FD floor, through the tokenizer ({floor_settings})": round(floors["reconstructed"]["fd"], 2)})

    print(f"model {args.checkpoint}: {10 * args.per_class} samples per row")
    print("| steps | cfg | schedule | temperature | head sampler | accuracy on generated | FD(gen, real) | FD(real, real) | s / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (head_steps, solver), steps, cfg, schedule, temperature in itertools.product(samplers, step_counts, cfgs, schedules, temperatures):
        if head_steps is not None or solver is not None:
            options = {"sample_steps": head_steps} if solver is None else {"sample_steps": head_steps, "solver": solver}
            model.score.set_sampler(**options)
        config = model.score.config
        head = " ".join(str(v) for v in (getattr(config, "sample_steps", ""), getattr(config, "solver", ""))).strip() or "-"
        r = evaluate(model, cnn, per_class=args.per_class, cfg=cfg, temperature=temperature, steps=steps, seed=args.seed,
                     cfg_schedule=schedule, reference=args.reference)
        print(f"| {steps} | {cfg:g} | {schedule} | {temperature:g} | {head} | {r['accuracy']:.2%} | {r['fd_gen_real']:.2f} "
              f"| {r['fd_real_real']:.2f} | {r['seconds_per_image']:.4f} |", flush=True)
        if args.record:
            settings = (f"{10 * args.per_class} samples, {args.reference} reference, {steps} steps, CFG {cfg:g} {schedule}, "
                        f"temperature {temperature:g}" + ("" if head == "-" else f", head sampler {head}") + f", seed {args.seed}")
            record_results(args.checkpoint, {f"MNIST accuracy ({settings})": round(r["accuracy"], 4),
                                             f"MNIST FD ({settings}; real vs real {r['fd_real_real']:.2f})": round(r["fd_gen_real"], 2)})
    if args.record:
        print(f"recorded in {Path(args.checkpoint) / RESULTS_FILE}")


if __name__ == "__main__":
    main()
