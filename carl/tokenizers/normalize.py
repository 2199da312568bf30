"""Latent normalisation from data: the "where does MAR's 0.2325 come from" computation.

A latent tokenizer multiplies its latents by a scale (and may subtract a shift) so that the tokens
the autoregressive model sees are roughly zero-mean and unit-variance. LDM and MAR take the scale as
one over the standard deviation of posterior samples of training data; :func:`measure` estimates
the per-channel statistics of a tokenizer's tokens and :meth:`Tokenizer.renormalize` absorbs them.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from carl.tokenizers.base import FIT_SAMPLES, Tokenizer
from carl.tokenizers.statistics import TokenStatistics


@torch.no_grad()
def measure(tokenizer: Tokenizer, dataset, samples: int = FIT_SAMPLES, batch_size: int = 256, seed: int = 0) -> TokenStatistics:
    """Token statistics over the first ``samples`` items of ``dataset`` (items with ``data``).

    The tokenizer encodes in training mode, so a VAE draws from its posterior as it does when the
    AR model trains (LDM's recipe for the scale factor).
    """
    torch.manual_seed(seed)
    count = min(samples, len(dataset))
    loader = DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=batch_size)
    device = next((b.device for b in tokenizer.buffers()), torch.device("cpu"))
    was_training = tokenizer.training
    tokenizer.train()
    total = sq = None
    n = 0
    try:
        for batch in loader:
            tokens = tokenizer.encode(batch["data"].to(device)).double().flatten(0, 1)  # (B * N, D)
            total = tokens.sum(0) if total is None else total + tokens.sum(0)
            sq = (tokens**2).sum(0) if sq is None else sq + (tokens**2).sum(0)
            n += len(tokens)
    finally:
        tokenizer.train(was_training)
    mean = total / n
    std = (sq / n - mean**2).clamp_min(0).sqrt()
    return TokenStatistics(mean.float().cpu(), std.float().cpu(), n)


def normalize(tokenizer: Tokenizer, dataset, samples: int = FIT_SAMPLES, batch_size: int = 256) -> tuple[TokenStatistics, dict | None]:
    """Measure ``tokenizer`` on ``dataset`` and absorb the statistics (see :meth:`Tokenizer.renormalize`).
    Returns the statistics before and the config options to persist (None: stored in buffers)."""
    stats = measure(tokenizer, dataset, samples, batch_size)
    return stats, tokenizer.renormalize(stats)
