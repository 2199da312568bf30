"""The Tokenizer interface: data <-> continuous tokens ``(B, N, D)``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from carl.tokenizers.statistics import TokenStatistics

FIT_SAMPLES = 4096  # training items a tokenizer's data-dependent state is estimated from


class Tokenizer(nn.Module, ABC):
    """Maps a batch of data to continuous tokens ``(B, N, D)`` and back.

    Subclasses set ``token_dim`` (D) and ``num_tokens`` (N) in ``__init__`` from their
    ``Config`` and take that config as their only constructor argument. A tokenizer carries
    its own normalisation, so that the tokens it emits are roughly zero-mean and unit-scale and
    ``decode(encode(x))`` gives back ``x``. Inside an AR model a tokenizer is frozen; trainable
    ones (``trainable = True``, the autoencoder) learn in a tokenizer job (:mod:`carl.training.jobs.tokenizer`).

    State that ``fit`` estimates (normalisation statistics) lives in buffers, so it is saved and
    restored with the model weights.
    """

    token_dim: int
    num_tokens: int

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data batch ``x`` -> tokens ``(B, N, D)``, float32."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, D)`` -> data batch shaped like the input of :meth:`encode`."""

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of one data item that :meth:`encode` takes (without the batch axis), or None
        if it takes several; training checks the data against it before the first step."""
        return None

    def prepare(self) -> None:
        """Load external state (pretrained weights) before training or caching; default: nothing.
        Never called when loading a model folder, whose weights file already holds that state."""

    def cache(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a token cache stores for a data batch (one entry per item); default: the tokens.
        Tokenizers that sample (a VAE posterior) or augment store what they draw from instead."""
        return {"tokens": self.encode(x)}

    def from_cache(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens ``(B, N, D)`` from a batch of cache rows (see :meth:`cache`)."""
        return batch["tokens"].float()

    def token_mask(self, known: torch.Tensor) -> torch.Tensor:
        """Which tokens a data mask fully knows: ``known`` (bool, the data's shape ``(B, ...)``) ->
        ``(B, N)`` bool, True for a token every value of which is known (completion generates the
        others whole). Tokenizers of a grid of cells implement it with :func:`cell_mask`.

        Raises:
            NotImplementedError: the tokenizer has no data-to-token map (complete tokens directly).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot map a data mask to its tokens; "
                                  "complete token masks with ContinuousAR.complete_tokens")

    def fit(self, x: torch.Tensor) -> None:
        """Estimate data-dependent state (e.g. normalisation) from a sample batch; default: nothing."""

    @property
    def needs_fit(self) -> bool:
        return False

    def renormalize(self, stats: TokenStatistics) -> dict | None:
        """Absorb token statistics (per-channel mean and std, :class:`carl.tokenizers.statistics.TokenStatistics`)
        measured under the current normalisation, so that tokens become roughly zero-mean and unit-scale (see
        :func:`carl.tokenizers.normalize.measure`). Returns None when the new normalisation lives in
        the tokenizer's buffers (saved with its weights), or the config options that carry it (e.g.
        ``{"scale": 0.2294}``) for a tokenizer whose normalisation is part of its config.

        Raises:
            NotImplementedError: the tokenizer has no adjustable normalisation.
        """
        raise NotImplementedError(f"{type(self).__name__} has no adjustable latent normalisation")


def prepare_tokenizer(tokenizer: Tokenizer, dataset, samples: int = FIT_SAMPLES) -> Tokenizer:
    """Make a freshly built tokenizer ready to encode ``dataset`` (items with ``data``): load its
    external state (:meth:`Tokenizer.prepare`), then fit its data-dependent state on the first
    ``samples`` items when it has any. Training, ``carl cache`` and ``carl tokenizer scale`` all
    prepare a tokenizer this way. Returns the tokenizer."""
    tokenizer.prepare()
    if tokenizer.needs_fit:
        tokenizer.fit(dataset[: min(len(dataset), samples)]["data"])
    return tokenizer


def cell_mask(known: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``known (B, *spatial)`` bool -> ``(B, prod(grid))``: for a tokenizer whose tokens are the cells
    of ``grid`` over the spatial axes in raster order (each side a multiple of the grid's), whether
    every value of each cell is known."""
    batch, spatial = known.shape[0], known.shape[1:]
    if len(spatial) != len(grid) or any(s % g for s, g in zip(spatial, grid)):
        raise ValueError(f"a mask of spatial shape {tuple(spatial)} does not split into a {tuple(grid)} grid of cells")
    split = [batch]
    for side, cells in zip(spatial, grid):
        split += [cells, side // cells]  # (B, g1, c1, g2, c2, ...): cell index, then place in the cell
    cells = known.reshape(split)
    return cells.all(dim=tuple(range(2, len(split), 2))).flatten(1)
