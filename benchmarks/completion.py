"""Completion of half digits: how well each model finishes a held-out digit it never saw.

    python benchmarks/completion.py runs/mnist-ear runs/mnist-ear-random runs/mnist-ear-causal [--count 500] [--keep top]

For each model (one per order: masked, random, causal), the top (or ``--keep``) half of ``count``
held-out digits is kept and the rest completed by ``ContinuousAR.complete``, once with the digit's
label and once without (the model's unconditional class, CFG 1). A CNN trained on 2,000 *training*
digits (``mnist_quality.py --reference tuning``: it never saw these held-out digits either)
classifies the completed digits. Printed per model: its order, the accuracy with and without the
label, the accuracy of the kept half alone (the rest left blank: what the completion adds), the
pixel error of the generated half against the real one, and seconds per completion. The first
model's completions are drawn to ``benchmarks/out/completion_grid.png`` (originals with their
hole above three completions each). The causal order can complete only a prefix: ``top`` is one
in raster order, ``left`` is not (its row is then reported as refused).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from carl.model import load_model
from carl.model.samples import keep_mask, save_completion_grid
from carl_image_ear.mnist import mnist_arrays
from mnist_quality import as_tensor, predict, train_classifier


def complete(model, digits, labels, known, *, label: bool, seed: int, batch: int = 250):
    """Completions ``(B, 1, 28, 28)`` in [0, 1] and seconds per completion."""
    g = torch.Generator().manual_seed(seed)
    start, out = time.perf_counter(), []
    for i in range(0, len(digits), batch):
        condition = labels[i : i + batch] if label else None
        settings = {} if label else {"cfg": 1.0}  # the recipe's CFG needs a label to guide toward
        out.append(model.complete(digits[i : i + batch], known, condition, generator=g, **settings))
    return torch.cat(out).clamp(0, 1), (time.perf_counter() - start) / len(digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="MNIST model folders (e.g. one per order)")
    parser.add_argument("--count", type=int, default=500, help="held-out digits to complete")
    parser.add_argument("--keep", default="top", choices=("top", "bottom", "left", "right"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default="benchmarks/out/completion_grid.png")
    args = parser.parse_args()

    cnn = train_classifier(reference="tuning")
    images, labels = mnist_arrays("heldout")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.count]
    digits, labels = as_tensor(images)[pick], torch.from_numpy(labels).long()[pick]
    known = keep_mask((1, 28, 28), args.keep)
    kept_only = torch.where(known, digits, torch.zeros(()))
    half_alone = (predict(cnn, kept_only)[0] == labels).float().mean().item()
    print(f"{args.count} held-out digits, the {args.keep} half kept; the classifier on the kept half alone: {half_alone:.1%}")
    print("| model | order | accuracy, label kept | accuracy, no label | pixel MSE of the generated half | s / completion |")
    print("|---|---|---|---|---|---|")
    for index, folder in enumerate(args.models):
        model, recipe = load_model(folder)
        order = recipe.model.order.name
        try:
            with_label, seconds = complete(model, digits, labels, known, label=True, seed=args.seed)
            without, _ = complete(model, digits, labels, known, label=False, seed=args.seed)
        except ValueError as exc:
            print(f"| {folder} | {order} | refused: {exc} | | | |")
            continue
        accuracy = (predict(cnn, with_label)[0] == labels).float().mean().item()
        unlabelled = (predict(cnn, without)[0] == labels).float().mean().item()
        error = (with_label - digits)[:, :, ~known[0]].square().mean().item()
        print(f"| {folder} | {order} | {accuracy:.1%} | {unlabelled:.1%} | {error:.4f} | {seconds:.3f} |", flush=True)
        if index == 0:
            grid_digits, grid_labels = digits[:10], labels[:10]
            repeats = complete(model, grid_digits.repeat(3, 1, 1, 1), grid_labels.repeat(3), known, label=True,
                               seed=args.seed + 1)[0]
            order_rows = repeats.view(3, 10, 1, 28, 28).transpose(0, 1).flatten(0, 1)  # original-major
            path = save_completion_grid(recipe.data.build("datasets"), grid_digits, known.expand_as(grid_digits),
                                        order_rows, Path(args.grid))
            print(f"grid: {path}")


if __name__ == "__main__":
    main()
