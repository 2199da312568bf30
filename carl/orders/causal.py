"""Raster order with causal attention (GPT, GIVT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from carl.orders.base import Order, Plan, identity_order, one_per_step


@dataclass(frozen=True)
class CausalOrderConfig:
    pass


class CausalOrder(Order):
    """Tokens in raster order, each predicted from all before it; one token per generation step.

    ``num_steps`` is ignored at generation: a causal model always takes ``N`` steps (with a KV cache).
    """

    Config = CausalOrderConfig
    attention = "causal"

    def __init__(self, config: CausalOrderConfig | None = None):
        self.config = config or CausalOrderConfig()

    def plan(self, batch_size, seq_len, generator=None, device="cpu") -> Plan:
        known = torch.zeros(batch_size, seq_len, dtype=torch.bool, device=device)
        return Plan(identity_order(batch_size, seq_len, device), known)

    def schedule(self, seq_len: int, num_steps: int) -> list[int]:
        return one_per_step(seq_len)

    def completion_order(self, known: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raster order: the known tokens must be a prefix (the first K in raster order); a causal
        model predicts each token from those before it, so it cannot fill a hole."""
        batch, seq_len = known.shape
        prefix = torch.arange(seq_len, device=known.device) < known.sum(1, keepdim=True)
        if not torch.equal(known, prefix):
            raise ValueError("the causal order completes a prefix (the first tokens in raster order) but cannot fill "
                             "a hole; train the model with order random or masked to fill any known set")
        return identity_order(batch, seq_len, known.device)
