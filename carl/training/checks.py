"""Checks before training: does the data fit the tokenizer?

Run once before the first step (and before ``carl cache`` encodes anything), so that a data
item of the wrong shape is one line naming both shapes instead of an IndexError deep inside a
step, or worse, a run that trains on the wrong windows without complaint.
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from carl.data import DataSource
from carl.errors import CarlError
from carl.tokenizers.base import Tokenizer

PROBE_ITEMS = 2


def check_data_fits(source: DataSource, dataset, tokenizer: Tokenizer, *, data: str, tokenizer_name: str) -> None:
    """Fail in one line when the items of ``dataset`` do not fit ``tokenizer``.

    Three checks, cheapest first: the shape of one item against ``tokenizer.input_shape``; the
    data source's own :meth:`DataSource.check_tokenizer`; then a probe batch of two items is
    encoded (or read from token-cache rows) and must give ``(num_tokens, token_dim)`` tokens.

    Args:
        source: the data source that made ``dataset``.
        dataset: map-style dataset of dict items (``data``, or token-cache rows).
        tokenizer: the model's tokenizer (state need not be fitted or loaded yet).
        data: the recipe's data source name, for messages.
        tokenizer_name: the recipe's tokenizer name, for messages.

    Raises:
        CarlError: naming the data's and the tokenizer's shapes.
    """
    first = dataset[0]
    shape = tuple(first["data"].shape) if "data" in first else None
    expected = tokenizer.input_shape
    if shape is not None and expected is not None and shape != tuple(expected):
        raise CarlError(f"data '{data}' gives items of shape {shape} but tokenizer '{tokenizer_name}' takes {tuple(expected)}: "
                        f"make the data settings and model.tokenizer agree")
    try:
        source.check_tokenizer(tokenizer)
    except ValueError as exc:
        raise CarlError(f"data '{data}' does not fit tokenizer '{tokenizer_name}': {exc}") from exc
    tokens = _probe_tokens(dataset, tokenizer, f"data '{data}' (items of shape {shape})", tokenizer_name)
    want = (tokenizer.num_tokens, tokenizer.token_dim)
    if tuple(tokens.shape[1:]) != want:
        raise CarlError(f"tokenizer '{tokenizer_name}' encodes items of data '{data}' (shape {shape}) into "
                        f"{tuple(tokens.shape[1:])} tokens, but it declares {want} (num_tokens, token_dim)")


@torch.no_grad()
def _probe_tokens(dataset, tokenizer: Tokenizer, what: str, tokenizer_name: str) -> torch.Tensor:
    batch = default_collate([dataset[i] for i in range(min(PROBE_ITEMS, len(dataset)))])
    try:
        with torch.random.fork_rng(devices=[]):  # a sampling tokenizer must not shift the run's random stream
            return tokenizer.encode(batch["data"]) if "data" in batch else tokenizer.from_cache(batch)
    except Exception as exc:  # any failure here is the data not fitting: say which sides
        raise CarlError(f"tokenizer '{tokenizer_name}' cannot encode {what}: {type(exc).__name__}: {exc}") from exc
