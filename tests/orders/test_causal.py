"""The causal orders (:mod:`carl.orders.causal`, :mod:`carl.orders.random`): every position a target,
raster or shuffled."""

import torch

from carl.orders import CausalOrder, RandomOrder


def test_causal_plans():
    plan = CausalOrder().plan(3, 5)
    assert torch.equal(plan.order, torch.arange(5).expand(3, 5)) and plan.targets.all()
    assert RandomOrder().plan(3, 5).targets.all() and RandomOrder.query_next
