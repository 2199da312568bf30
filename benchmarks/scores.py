"""The scoring rules side by side: a synthetic task with a known distribution, EAR's alpha
ablation, MNIST quality, and the sampling speed of the energy head against diffusion.

    python benchmarks/scores.py                      # every section (about an hour on 2 CPU cores)
    python benchmarks/scores.py --only toy alpha     # the synthetic sections (about 15 minutes)
    python benchmarks/scores.py --only mnist --mnist-epochs 4
    python benchmarks/scores.py --only family --family-epochs 22 --per-class 100
    python benchmarks/scores.py --only speed [--device cuda]

toy: every rule trains the same small transformer through the real trainer (recipe `tiny`, same
budget) on the `toy` sequences, 2-D points whose next point turns +-45 degrees on a ring (known,
bimodal given the previous point). Reported: the energy distance between generated and true
sequences (16 values each; 0 for a perfect model; real-vs-real gives the noise floor), the mean
distance of each generated point from its true conditional mean (truth: sin 45 deg = 0.71; a
head that collapses to the mean gives about 0), training and sampling time.
alpha: the energy score with alpha in {1, 1.5, 1.99, 2} on the same task, and a PNG with the
generated (previous point -> next point turn) scatter: alpha = 2 collapses toward the mean.
mnist: recipes mnist-ear / -gaussian / -gmm / -diffusion (same backbone and budget), each over the
mnist-ae latents and over 4x4 pixel patches, scored by benchmarks/mnist_quality.py's classifier
accuracy and feature Frechet distance.
family: mnist-ear / -diffusion / -flow at equal training compute (each trains for the FLOPs of
mnist-ear at --family-epochs) and, through the heads' sampler options, at equal sampling time
(every diffusion and flow model is sampled at several head steps and solvers: FD against steps).
speed: energy vs diffusion sampling at benchmarks/speed.py's shape (64 tokens of 16 values,
width 256, 64 generation steps, CFG 3; diffusion with 100 denoising steps).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from carl.config import ModelConfig, from_dict, load_recipe, to_dict
from carl.data import ToyConfig, ToySequences
from carl.model import load_model
from carl.model import ContinuousAR
from carl.api import train

TOY_RULES = {
    "energy": {"name": "energy", "alpha": 1.0},
    "crps": {"name": "crps"},
    "kernel": {"name": "kernel", "kernel": "gaussian", "bandwidth": 0.5},
    "gaussian": {"name": "gaussian"},
    "gmm": {"name": "gmm", "components": 4},
    "diffusion": {"name": "diffusion", "batch_mul": 4, "sample_steps": 50, "clip_x0": 1.5},  # points lie in [-1.2, 1.2]
}
TOY_TRAINING = [
    "data.num_samples=8192", "train.max_steps=1500", "train.global_batch=64", "train.base_lr=4e-3",
    "train.ema_decay=0.99", "train.checkpoint_every=null", "model.backbone.width=64", "model.backbone.heads=4",
]


def score_override(score: dict) -> str:
    """The whole score section as one override, every head 2 blocks x 64 wide."""
    return "model.score=" + yaml.safe_dump({"depth": 2, "width": 64, **score}, default_flow_style=True).strip()


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| between two samples (rows are flattened sequences)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


def spread_around_conditional_mean(seqs: torch.Tensor) -> float:
    """Mean distance of each point from E[next | previous] = cos 45 deg x (previous on the ring)."""
    prev, nxt = seqs[:, :-1], seqs[:, 1:]
    mean = math.cos(math.pi / 4) * prev / prev.norm(dim=-1, keepdim=True)
    return (nxt - mean).norm(dim=-1).mean().item()


def turns(seqs: torch.Tensor) -> np.ndarray:
    """Signed angle from each point to the next, in degrees (truth: +-45)."""
    a = torch.atan2(seqs[..., 1], seqs[..., 0])
    return torch.rad2deg(torch.remainder(a[:, 1:] - a[:, :-1] + math.pi, 2 * math.pi) - math.pi).flatten().numpy()


def true_sequences(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    points, labels = ToySequences(ToyConfig(num_samples=n, seed=1234)).arrays()
    return torch.from_numpy(points), torch.from_numpy(labels)


def train_toy(score: dict, workdir: Path, name: str) -> dict:
    cfg = load_recipe("tiny", [*TOY_TRAINING, score_override(score)])
    start = time.perf_counter()
    folder = train(cfg, output=workdir / name, progress=False)
    seconds = time.perf_counter() - start
    model, _ = load_model(folder)
    real, labels = true_sequences(2000)
    start = time.perf_counter()
    gen = model.generate(labels, cfg=1.0, temperature=1.0, generator=torch.Generator().manual_seed(0))
    sample_s = (time.perf_counter() - start) / len(labels)
    return {"gen": gen, "train_s": seconds, "sample_ms": 1e3 * sample_s, "ed": energy_distance(gen, real),
            "spread": spread_around_conditional_mean(gen)}


def toy_table(results: dict[str, dict]) -> None:
    real, _ = true_sequences(2000)
    other, _ = ToySequences(ToyConfig(num_samples=2000, seed=99)).arrays()
    floor = energy_distance(torch.from_numpy(other), real)
    print(f"true sequences: energy distance real-vs-real {floor:.4f}, spread {spread_around_conditional_mean(real):.3f}")
    print("| rule | energy distance | spread around the conditional mean | train time | sampling ms / sequence |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ed']:.4f} | {r['spread']:.3f} | {r['train_s']:.0f} s | {r['sample_ms']:.2f} |")


def turn_histograms(results: dict[str, dict], path: Path) -> None:
    """One panel per model: histogram of turn angles (-90..90 degrees); truth has two spikes at +-45."""
    real, _ = true_sequences(2000)
    panels = {"truth": turns(real), **{k: turns(v["gen"]) for k, v in results.items()}}
    w, h, pad = 240, 140, 20
    image = Image.new("RGB", (w * len(panels), h + 2 * pad), "white")
    draw = ImageDraw.Draw(image)
    for i, (name, angles) in enumerate(panels.items()):
        counts, _ = np.histogram(angles, bins=60, range=(-90, 90))
        x0 = i * w + 10
        for b, c in enumerate(counts):
            top = h + pad - int((h - 10) * c / max(counts.max(), 1))
            draw.rectangle([x0 + b * 3.6, top, x0 + b * 3.6 + 3, h + pad], fill=(40, 90, 200))
        for deg in (-45, 0, 45):
            xd = x0 + (deg + 90) / 180 * 216
            draw.line([xd, pad, xd, h + pad], fill=(200, 60, 60) if deg else (160, 160, 160))
        draw.text((x0, 4), name, fill="black")
        for deg in (-90, 0, 90):
            draw.text((x0 + (deg + 90) / 180 * 216 - 8, h + pad + 4), f"{deg:+d}" if deg else "0", fill="black")
    image.save(path)


def speed(device: torch.device) -> None:
    from speed import model_config  # benchmarks/speed.py: the shared shape

    labels = torch.arange(8, device=device) % 10
    rows = {}
    for rule, score in {"energy": {"name": "energy", "depth": 3, "width": 256},
                        "diffusion": {"name": "diffusion", "depth": 3, "width": 256, "sample_steps": 100}}.items():
        config = from_dict(ModelConfig, {**to_dict(model_config("masked")), "score": score})
        model = ContinuousAR(config).to(device).eval()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model.generate(labels, num_steps=64, cfg=3.0, generator=torch.Generator(device).manual_seed(0), return_tokens=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows[rule] = statistics.median(times)
    tokens = len(labels) * 64
    print("| head | s / image | tokens / s |")
    print("|---|---|---|")
    for rule, seconds in rows.items():
        print(f"| {rule} | {seconds / len(labels):.3f} | {tokens / seconds:.0f} |")
    print(f"diffusion / energy sampling time at 64 steps, 100 denoising steps: {rows['diffusion'] / rows['energy']:.1f}x")


MNIST_RECIPES = ("mnist-ear", "mnist-gaussian", "mnist-gmm", "mnist-diffusion", "mnist-flow")
# The recipes model the mnist-ae tokenizer's latents; in pixel space each goes back to 4x4 patches
# of 16 values with mnist-ear-pixels' sampling settings (and the energy generator's width 128).
PIXELS = ["model.tokenizer={name: patch, shape: [1, 28, 28], patch: [4, 4]}", "sample.num_steps=16", "sample.cfg=4.0"]
PIXEL_FIXES = {"mnist-ear": ["model.score.width=128"], "mnist-diffusion": ["model.score.clip_x0=3.0"]}  # pixels: [-0.5, 2.8]
# fp32 for every row (the README tables were measured so; mnist-ear itself trains with mixed_precision: auto)
NO_EXTRAS = ["train.sample_every=null", "train.checkpoint_every=null", "train.mixed_precision=no"]


def mnist(epochs: int, workdir: Path, per_class: int, spaces: list[str], recipes: list[str]) -> None:
    from mnist_quality import evaluate, train_classifier

    cnn = train_classifier()
    print(f"| recipe ({epochs} epochs) | tokens | accuracy | FD(gen, real) | FD(real, real) | s / image | train time |")
    print("|---|---|---|---|---|---|---|")
    for recipe in recipes:
        for space in spaces:
            overrides = PIXELS + PIXEL_FIXES.get(recipe, []) if space == "pixel" else []
            cfg = load_recipe(recipe, [*overrides, f"train.epochs={epochs}", *NO_EXTRAS])
            start = time.perf_counter()
            folder = train(cfg, output=workdir / f"{recipe}-{space}", progress=False)
            seconds = time.perf_counter() - start
            model, _ = load_model(folder)
            s = cfg.sample
            r = evaluate(model, cnn, per_class=per_class, cfg=s.cfg, temperature=s.temperature, steps=s.num_steps)
            print(f"| {recipe} | {space} | {r['accuracy']:.1%} | {r['fd_gen_real']:.1f} | {r['fd_real_real']:.1f} | "
                  f"{r['seconds_per_image']:.3f} | {seconds / 60:.1f} min |", flush=True)


def train_step_flops(cfg, batches: int = 8) -> float:
    """Mean FLOPs of one training step of the recipe's model (3 x the forward pass, matmuls and
    attention as ``FlopCounterMode`` counts them) over ``batches`` real batches of training digits
    (the masked order's number of targets varies from step to step)."""
    from torch.utils.flop_counter import FlopCounterMode

    from carl_image_ear.mnist import mnist_arrays

    images, labels = mnist_arrays("train")
    b = cfg.train.global_batch
    torch.manual_seed(0)
    model = ContinuousAR(cfg.model).train()
    total = 0
    for i in range(batches):
        batch = {"data": torch.from_numpy(images[i * b : (i + 1) * b]).float().div(255)[:, None],
                 "condition": torch.from_numpy(labels[i * b : (i + 1) * b]).long()}
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.loss(batch)
        total += counter.get_total_flops()
    return 3 * total / batches


HEAD_SWEEP = {"mnist-diffusion": [(n, None) for n in (5, 10, 25, 50, 100)],
              "mnist-flow": [(n, solver) for solver in ("euler", "midpoint") for n in (2, 4, 8, 16, 32)]}


def mnist_family(budget_epochs: float, workdir: Path, per_class: int, recipes: list[str], overrides: list[str]) -> None:
    """Every recipe at the training FLOPs of ``mnist-ear`` at ``budget_epochs``, then sampled at
    its recipe's settings and, for the diffusion and flow heads, at each head sampler of
    :data:`HEAD_SWEEP` (FD against head steps; the row whose s / image is nearest the energy
    head's is the equal-sampling-time comparison)."""
    from mnist_quality import evaluate, train_classifier

    reference = load_recipe("mnist-ear", [*overrides, f"train.epochs={budget_epochs}"])
    steps_per_epoch = 8000 // reference.train.global_batch
    budget = train_step_flops(reference) * budget_epochs * steps_per_epoch
    print(f"training budget: mnist-ear for {budget_epochs:g} epochs = {budget / 1e12:.1f} TFLOP "
          f"(matmuls and attention, 3 x forward)", flush=True)
    cnn = train_classifier()
    rows = []
    for recipe in recipes:
        cfg = load_recipe(recipe, [*overrides, *NO_EXTRAS])
        step_flops = train_step_flops(cfg)
        max_steps = max(1, round(budget / step_flops))
        cfg = load_recipe(recipe, [*overrides, *NO_EXTRAS, f"train.max_steps={max_steps}"])
        start = time.perf_counter()
        folder = train(cfg, output=workdir / recipe, progress=False)
        minutes = (time.perf_counter() - start) / 60
        model, _ = load_model(folder)
        s = cfg.sample
        samplers = HEAD_SWEEP.get(recipe, []) if hasattr(model.score, "set_sampler") else []
        default = (getattr(model.score.config, "sample_steps", None), getattr(model.score.config, "solver", None))
        for head_steps, solver in [default, *[x for x in samplers if x != default]]:
            if head_steps is not None:
                model.score.set_sampler(**({"sample_steps": head_steps} | ({"solver": solver} if solver else {})))
            r = evaluate(model, cnn, per_class=per_class, cfg=s.cfg, temperature=s.temperature, steps=s.num_steps)
            head = "-" if head_steps is None else f"{head_steps}{' ' + solver if solver else ''}"
            rows.append((recipe, cfg.model.score.name, max_steps, step_flops, minutes, head, r))
            print(f"| {recipe} | {max_steps} steps, {step_flops / 1e9:.1f} GFLOP each, {minutes:.1f} min | {head} | "
                  f"{r['accuracy']:.1%} | {r['fd_gen_real']:.1f} | {r['fd_real_real']:.1f} | {r['seconds_per_image']:.3f} |",
                  flush=True)
    energy = [r for r in rows if r[1] == "energy"]
    if energy:
        target = energy[0][6]["seconds_per_image"]
        print(f"equal sampling time (energy: {target:.3f} s / image), nearest head sampler per recipe:")
        for recipe in dict.fromkeys(r[0] for r in rows):
            mine = [r for r in rows if r[0] == recipe]
            best = min(mine, key=lambda r: abs(r[6]["seconds_per_image"] - target))
            print(f"| {recipe} | {best[5]} | {best[6]['accuracy']:.1%} | {best[6]['fd_gen_real']:.1f} | "
                  f"{best[6]['seconds_per_image']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["toy", "alpha", "mnist", "family", "speed"],
                        default=["toy", "alpha", "mnist", "speed"])
    parser.add_argument("--rules", nargs="+", choices=list(TOY_RULES), default=list(TOY_RULES), help="for the toy section")
    parser.add_argument("--mnist-epochs", type=int, default=4)
    parser.add_argument("--mnist-space", nargs="+", choices=["latent", "pixel"], default=["latent", "pixel"],
                        help="tokens of the MNIST section: the mnist-ae latents, 4x4 pixel patches, or both")
    parser.add_argument("--mnist-recipes", nargs="+", default=list(MNIST_RECIPES), help="for the mnist section")
    parser.add_argument("--family-recipes", nargs="+", default=["mnist-ear", "mnist-diffusion", "mnist-flow"])
    parser.add_argument("--family-epochs", type=float, default=22,
                        help="family: the training FLOPs of mnist-ear at this many epochs, for every recipe")
    parser.add_argument("--family-set", nargs="*", default=[], help="family: overrides for every recipe")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="for the speed section")
    parser.add_argument("--out", default="benchmarks/out", help="folder for the figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "toy" in args.only:
            results = {name: train_toy(TOY_RULES[name], workdir, name) for name in args.rules}
            toy_table(results)
            turn_histograms(results, out / "toy_turns.png")
        if "alpha" in args.only:
            results = {f"alpha {a}": train_toy({"name": "energy", "alpha": a}, workdir, f"alpha-{a}") for a in (1.0, 1.5, 1.99, 2.0)}
            toy_table(results)
            turn_histograms(results, out / "alpha_turns.png")
            print(f"figure: {out / 'alpha_turns.png'} (turn angles; truth: two spikes at +-45 degrees)")
        if "mnist" in args.only:
            mnist(args.mnist_epochs, workdir, args.per_class, args.mnist_space, args.mnist_recipes)
        if "family" in args.only:
            mnist_family(args.family_epochs, workdir, args.per_class, args.family_recipes, args.family_set)
        if "speed" in args.only:
            speed(torch.device(args.device))


if __name__ == "__main__":
    main()
