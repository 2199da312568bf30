"""Forecasts from a trained model, their scores, and the comparison with the baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from carl.scores import crps, energy_score
from carl_timeseries.baselines import BASELINES


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


def scores(samples: torch.Tensor, truth: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Energy score of whole horizons (channels divided by ``scale`` so that none dominates) and
    CRPS per channel in the original units, averaged over windows (and horizon steps for CRPS).
    ``samples (S, B, H, C)``; one sample is a point forecast (the scores become absolute errors)."""
    if samples.shape[0] == 1:  # a point mass: |x - y| (the diversity term is 0)
        samples = samples.expand(2, -1, -1, -1)
    es = energy_score((samples / scale).flatten(2), (truth / scale).flatten(1), alpha=1.0).mean()
    per_channel = torch.stack([crps(samples[..., c : c + 1], truth[..., c : c + 1]).mean() for c in range(truth.shape[-1])])
    return {"energy_score": es, "crps": per_channel}


@dataclass(frozen=True)
class Compared:
    """One forecaster's sample paths ``(S, B, H, C)``, its scores and the seconds it took."""

    paths: torch.Tensor
    scores: dict[str, torch.Tensor] | None
    seconds: float


def compare(model, windows: torch.Tensor, num_paths: int, *, scale: torch.Tensor, known: int | None = None,
            baselines: tuple[str, ...] = tuple(BASELINES), seed: int = 0) -> dict[str, Compared]:
    """carl's forecast and the named baselines on the same windows, scored on the first ``known``
    horizon steps (default: all; 0: no truth, no scores).

    Args:
        model: a trained ``ContinuousAR`` with a series tokenizer.
        windows: ``(B, context + horizon, C)``; only the first ``context`` steps are read to forecast.
        num_paths: sample paths per window (for carl, ETS and ARIMA).
        scale: ``(C,)`` spread of each channel, so that none dominates the energy score.
        known: leading horizon steps whose truth is observed.
        baselines: names from :data:`carl_timeseries.baselines.BASELINES`.
        seed: seeds carl's sampler and the baselines' simulations.
    """
    context = model.tokenizer.config.context
    horizon = windows.shape[1] - context
    known = horizon if known is None else known
    truth = windows[:, context : context + known]
    runs = {"carl": lambda: forecast(model, windows, num_paths, torch.Generator().manual_seed(seed))}
    runs.update({name: (lambda f=BASELINES[name]: f(windows, context, num_paths, seed)) for name in baselines})
    results = {}
    for name, run in runs.items():
        start = time.perf_counter()
        paths = run()
        seconds = time.perf_counter() - start
        results[name] = Compared(paths, scores(paths[:, :, :known], truth, scale) if known else None, seconds)
    return results
