"""Random-permutation order with causal attention in permutation order (sigma-GPT, RAR)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from carl.orders.base import Order, Plan, one_per_step, random_permutations


@dataclass(frozen=True)
class RandomOrderConfig:
    pass


class RandomOrder(Order):
    """A fresh uniform permutation per sequence; causal attention in that order.

    Since the next position is not implied by the order, the model adds a learned embedding of
    the position to predict at each step (``query_next``), as sigma-GPT and RAR do.
    One token per generation step, with a KV cache.
    """

    Config = RandomOrderConfig
    attention = "causal"
    query_next = True

    def __init__(self, config: RandomOrderConfig | None = None):
        self.config = config or RandomOrderConfig()

    def plan(self, batch_size, seq_len, generator=None, device="cpu") -> Plan:
        order = random_permutations(batch_size, seq_len, generator, device)
        known = torch.zeros(batch_size, seq_len, dtype=torch.bool, device=device)
        return Plan(order, known)

    def schedule(self, seq_len: int, num_steps: int) -> list[int]:
        return one_per_step(seq_len)
