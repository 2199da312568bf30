"""Sample paths of a univariate carl forecaster for many histories at once.

The model reads windows of ``context`` past steps (a shorter history is left-padded with NaN,
which the tokenizer treats as missing) and generates the next ``length - context`` steps one patch
at a time. A horizon longer than that is reached by rolling: each path's last ``context`` steps
(observed and generated) become the past of the next window, with one draw per path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange, repeat

ROWS_PER_CALL = 8192  # windows generated in one call: bounds the memory of the KV cache


def check_forecaster(model) -> None:
    """Raise ValueError unless ``model`` is a univariate series model with the causal order."""
    from carl_timeseries.tokenizer import SeriesTokenizer

    tok = model.tokenizer
    if not isinstance(tok, SeriesTokenizer):
        raise ValueError(f"the model's tokenizer is {type(tok).__name__}, not the 'series' tokenizer of a forecaster")
    if tok.config.channels != 1:
        raise ValueError(f"the model reads {tok.config.channels} channels jointly (a multivariate window model); "
                         f"a forecaster of any series reads one channel")
    if model.order.attention != "causal" or model.order.query_next:
        raise ValueError("a forecaster needs the causal order (the past is the prompt)")


def pad_histories(histories: Sequence[np.ndarray], context: int) -> torch.Tensor:
    """The last ``context`` values of each history, left-padded with NaN: ``(B, context)``."""
    out = torch.full((len(histories), context), float("nan"))
    for i, h in enumerate(histories):  # one copy per series, not per sample
        tail = np.asarray(h, np.float32)[-context:]
        if len(tail):
            out[i, context - len(tail) :] = torch.from_numpy(tail)
    return out


@torch.no_grad()
def sample_paths(model, histories: Sequence[np.ndarray], horizon: int, num_samples: int,
                 generator: torch.Generator | None = None, temperature: float = 1.0) -> np.ndarray:
    """``num_samples`` paths ``(S, B, horizon)`` in each history's units after each history.

    Args:
        model: a univariate forecaster (:func:`check_forecaster`).
        histories: ``B`` 1-D arrays, observed (finite) values, oldest first; only the last
            ``context`` steps are read.
        horizon: steps to forecast (any length: longer than the model's window, by rolling).
        num_samples: sample paths per history.
        generator: seeds the draws.
        temperature: the scoring rule's sampling temperature.
    """
    tok = model.tokenizer.config
    context, step = tok.context, tok.length - tok.context
    past = pad_histories(histories, context)
    past = repeat(past, "b t -> (b s) t", s=num_samples)  # paths of one history are adjacent rows
    paths = []
    done = 0
    while done < horizon:
        drawn = _next_window(model, past, generator, temperature)  # (B * S, step)
        paths.append(drawn)
        done += step
        past = torch.cat([past, drawn], dim=1)[:, -context:]
    out = torch.cat(paths, dim=1)[:, :horizon]
    return rearrange(out, "(b s) h -> s b h", s=num_samples).numpy()


def _next_window(model, past: torch.Tensor, generator, temperature: float) -> torch.Tensor:
    """One draw of the ``length - context`` steps after each row of ``past (R, context)``."""
    tok = model.tokenizer
    context, length = tok.config.context, tok.config.length
    out = []
    for chunk in past.split(ROWS_PER_CALL):
        window = torch.cat([chunk, torch.full((len(chunk), length - context), float("nan"))], dim=1)[..., None]
        _, mean, std = tok.normalize(window)
        prompt = tok.encode(window)[:, : tok.context_tokens]
        tokens = model.generate(batch_size=len(chunk), prompt=prompt, generator=generator, temperature=temperature,
                                return_tokens=True)
        series = tok.denormalize(tok.decode(tokens), mean, std)[:, context:, 0]
        out.append(series)
    return torch.cat(out)


def quantiles_of(paths: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Empirical quantiles of paths ``(S, B, H)`` -> ``(B, H, Q)``."""
    return np.moveaxis(np.quantile(paths, list(levels), axis=0), 0, -1)
