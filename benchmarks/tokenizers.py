"""Patch tokens against learned (autoencoder) tokens, same AR model and budget.

    python benchmarks/tokenizers.py                  # the 1-D toy task (a few minutes on 2 CPU cores)

toy: the `toy` sequences (8 points on a ring, each turning +-45 degrees: bimodal given the
previous one), as in benchmarks/scores.py. A 1-D convolutional KL autoencoder (recipe `tiny-ae`)
is trained on them first; then the same transformer and energy head (benchmarks/scores.py's toy
budget) model either the raw points (the patch tokenizer: 8 tokens of 2 values) or the
autoencoder's tokens (4 tokens of 4 values, each covering 2 points). Reported: the tokenizer's
reconstruction error, and for each AR model the energy distance between 2,000 generated and true
sequences (decoded) and the spread of each point around its true conditional mean (truth 0.71).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from carl.config import load_recipe
from carl.model import load_model
from carl.tokenizers.pretrained import load_tokenizer
from carl.api import train
from scores import TOY_TRAINING, energy_distance, score_override, spread_around_conditional_mean, true_sequences

AE_TRAINING = ["data.num_samples=8192", "train.max_steps=1500", "train.global_batch=64", "train.checkpoint_every=null"]
TOKENIZERS = {
    "patch (8 tokens x 2)": None,
    "autoencoder (4 tokens x 4)": "{name: autoencoder, path: AE}",
}


def run(workdir: Path) -> None:
    start = time.perf_counter()
    ae = train(load_recipe("tiny-ae", AE_TRAINING), output=workdir / "ae", progress=False)
    real, labels = true_sequences(2000)
    tok = load_tokenizer(ae)
    mse = float(((tok.decode(tok.encode(real)) - real) ** 2).mean())
    print(f"tokenizer: {time.perf_counter() - start:.0f} s of training, reconstruction MSE {mse:.5f} "
          f"(data variance {float(real.var()):.3f})")
    print("| tokens | energy distance | spread around the conditional mean | AR train time | sampling ms / sequence |")
    print("|---|---|---|---|---|")
    for name, tokenizer in TOKENIZERS.items():
        overrides = [*TOY_TRAINING, score_override({"name": "energy", "alpha": 1.0})]
        if tokenizer is not None:
            overrides.append("model.tokenizer=" + tokenizer.replace("AE", str(ae)))
        start = time.perf_counter()
        folder = train(load_recipe("tiny", overrides), output=workdir / name.split()[0], progress=False)
        seconds = time.perf_counter() - start
        model, _ = load_model(folder)
        start = time.perf_counter()
        gen = model.generate(labels, generator=torch.Generator().manual_seed(0))
        ms = 1e3 * (time.perf_counter() - start) / len(labels)
        print(f"| {name} | {energy_distance(gen, real):.4f} | {spread_around_conditional_mean(gen):.3f} | {seconds:.0f} s | {ms:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the trained folders here")
    args = parser.parse_args()
    if args.workdir is not None:
        run(args.workdir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp))


if __name__ == "__main__":
    main()
