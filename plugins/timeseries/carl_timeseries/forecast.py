"""Forecasts from a trained model, their scores, and the two baselines they must beat."""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from carl.scores import crps, energy_score


@torch.no_grad()
def forecast(model, windows: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` sample paths ``(S, B, horizon, C)`` in the original units for the horizon
    of each window ``(B, length, C)``; only the first ``context`` steps of a window are read."""
    tok = model.tokenizer
    context = tok.config.context
    past = windows.clone()
    past[:, context:] = past[:, context - 1 : context]  # the future is never seen (nor its scale)
    _, mean, std = tok.normalize(past)
    prompt = repeat(tok.encode(past)[:, : tok.context_tokens], "b n d -> (s b) n d", s=num_samples)
    tokens = model.generate(batch_size=len(prompt), prompt=prompt, generator=generator, return_tokens=True)
    paths = tok.denormalize(tok.decode(tokens), mean.repeat(num_samples, 1, 1), std.repeat(num_samples, 1, 1))
    return rearrange(paths[:, context:], "(s b) h c -> s b h c", s=num_samples)


def last_value(windows: torch.Tensor, context: int) -> torch.Tensor:
    """The last observed value repeated over the horizon: ``(1, B, H, C)``."""
    horizon = windows.shape[1] - context
    return windows[:, context - 1 : context].expand(-1, horizon, -1)[None]


def seasonal_naive(windows: torch.Tensor, context: int, season: int = 4) -> torch.Tensor:
    """The last observed season repeated over the horizon: ``(1, B, H, C)``."""
    horizon = windows.shape[1] - context
    last_season = windows[:, context - season : context]
    return last_season.repeat(1, -(-horizon // season), 1)[:, :horizon][None]


def scores(samples: torch.Tensor, truth: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Energy score of whole horizons (channels divided by ``scale`` so that none dominates) and
    CRPS per channel in the original units, averaged over windows (and horizon steps for CRPS).
    ``samples (S, B, H, C)``; one sample is a point forecast (the scores become absolute errors)."""
    if samples.shape[0] == 1:  # a point mass: |x - y| (the diversity term is 0)
        samples = samples.expand(2, -1, -1, -1)
    es = energy_score((samples / scale).flatten(2), (truth / scale).flatten(1), alpha=1.0).mean()
    per_channel = torch.stack([crps(samples[..., c : c + 1], truth[..., c : c + 1]).mean() for c in range(truth.shape[-1])])
    return {"energy_score": es, "crps": per_channel}
