"""The Order interface: which tokens are known when each token is predicted."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch


@dataclass(frozen=True)
class Plan:
    """A training plan for a batch.

    ``order``: ``(B, N)`` long, a permutation per row; ``order[b, i]`` is the position generated
    i-th. ``known``: ``(B, N)`` bool indexed by *position*; the positions not known are the
    targets of the loss. Causal-attention orders know nothing up front: every token is a target,
    predicted from the tokens before it in ``order`` (teacher forcing). ``num_known``: set when
    every row knows the same number of positions (``known`` is then ``order[:, :num_known]``),
    so the model can gather fixed-size index tensors instead of indexing with a boolean mask,
    whose result size the host must read back from the device.
    """

    order: torch.Tensor
    known: torch.Tensor
    num_known: int | None = None

    @property
    def targets(self) -> torch.Tensor:
        return ~self.known

    def positions(self, known: bool) -> torch.Tensor:
        """``(B, K)`` the known (or target) positions of each row in ascending order, the order in
        which boolean indexing lists them. Needs ``num_known``."""
        if self.num_known is None:
            raise ValueError("this plan does not know the same number of positions in every row")
        return sorted_positions(self.order, 0, self.num_known) if known else sorted_positions(self.order, self.num_known)


class Order(ABC):
    """A generation order: the training plan and the generation schedule.

    ``attention`` is ``"causal"`` (each token attends to the tokens before it in the order; KV
    cache at generation) or ``"bidirectional"`` (known tokens and mask tokens attend to each other).
    ``query_next`` asks the model to add, at each causal step, the embedding of the position it
    predicts next (needed when the order is not fixed: sigma-GPT, RAR). Orders are pure: all
    randomness comes from the ``torch.Generator`` passed in.
    """

    attention: ClassVar[Literal["causal", "bidirectional"]]
    query_next: ClassVar[bool] = False

    @abstractmethod
    def plan(
        self, batch_size: int, seq_len: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Plan:
        """A training plan for ``batch_size`` sequences of ``seq_len`` tokens."""

    @abstractmethod
    def schedule(self, seq_len: int, num_steps: int) -> list[int]:
        """How many tokens are known after each generation step: strictly increasing, ending at ``seq_len``."""

    def generation_order(
        self, batch_size: int, seq_len: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The ``(B, N)`` order in which generation writes positions."""
        return self.plan(batch_size, seq_len, generator, device).order

    def completion_order(self, known: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The ``(B, N)`` order that completes rows whose ``known (B, N)`` positions are given (every
        row knows as many): the known positions first, ascending, then the unknown ones in a
        uniformly random order (MAR's inpainting, sigma-GPT's conditioning on any set).

        Raises:
            ValueError: this order cannot condition on such a set (see :class:`CausalOrder`).
        """
        batch, seq_len = known.shape
        gen_device = generator.device if generator is not None else known.device
        noise = torch.rand(batch, seq_len, generator=generator, device=gen_device).to(known.device)  # in [0, 1)
        position = torch.arange(seq_len, device=known.device, dtype=noise.dtype).expand(batch, seq_len)
        keys = torch.where(known, position - seq_len, noise)  # known: negative and ascending; unknown: random
        return keys.argsort(dim=1)


def sorted_positions(order: torch.Tensor, start: int, end: int | None = None) -> torch.Tensor:
    """``(B, end - start)``: the positions written at generation steps ``start .. end - 1`` of
    ``order``, ascending per row."""
    return order[:, start:end].sort(dim=1).values


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, N, C)`` at ``index (B, K)`` -> ``(B, K, C)``."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def random_permutations(
    batch_size: int, seq_len: int, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """``(B, N)`` independent uniform permutations from one vectorized call."""
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, seq_len, generator=generator, device=gen_device)
    return noise.argsort(dim=-1).to(device)


def identity_order(batch_size: int, seq_len: int, device: torch.device | str) -> torch.Tensor:
    return torch.arange(seq_len, device=device).expand(batch_size, seq_len)


def one_per_step(seq_len: int) -> list[int]:
    return list(range(1, seq_len + 1))
