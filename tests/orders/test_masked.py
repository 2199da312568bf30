"""MAR's masked order (:mod:`carl.orders.masked`): the cosine schedule, at least one token per step,
and the mask ratio drawn from the truncated normal."""

from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings, strategies as st

from carl.orders import MaskedOrder
from carl.orders.masked import MaskedOrderConfig


def test_masked_schedule_follows_the_cosine():
    assert MaskedOrder().schedule(256, 64)[:3] == [1, 2, 3]  # cos starts flat: one token per step
    assert MaskedOrder().schedule(256, 4) == [256 - 236, 256 - 181, 256 - 97, 256]


@pytest.mark.parametrize("n", [1, 2, 7, 16, 50])
@pytest.mark.parametrize("extra", [-20, -6, -1, 0, 1, 3, 40])
def test_masked_schedule_writes_at_least_one_token_per_step(n, extra):
    steps = max(1, n + extra)
    schedule = MaskedOrder().schedule(n, steps)
    # Every step writes a token while there are tokens left: min(N, steps) steps, and with at
    # least as many steps as tokens exactly one token per step.
    assert len(schedule) == min(n, steps)
    if steps >= n:
        assert schedule == list(range(1, n + 1))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_masked_ratio_stays_in_range(seed):
    order = MaskedOrder()
    ratio = order.sample_ratio(torch.Generator().manual_seed(seed))
    assert 0.7 <= ratio <= 1.0
    plan = order.plan(4, 49, torch.Generator().manual_seed(seed))
    counts = plan.targets.sum(-1)
    assert (counts == counts[0]).all() and 0.7 * 49 <= counts[0] <= 49
    # The known positions are a prefix of the order.
    ranks = plan.order.argsort(-1)
    assert torch.equal(plan.known, ranks < 49 - counts[0])


@pytest.mark.parametrize("config", [MaskedOrderConfig(), MaskedOrderConfig(mask_ratio_min=0.2, mask_std=0.5)])
@pytest.mark.parametrize("seed", range(4))
def test_masked_ratio_inverts_the_truncated_normal_cdf(config, seed):
    # One uniform draw u in float64, mapped through the inverse CDF of N(1, std) truncated to [min, 1].
    u = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()
    normal = NormalDist()
    cdf_lo = normal.cdf((config.mask_ratio_min - 1.0) / config.mask_std)
    expected = max(1.0 + config.mask_std * normal.inv_cdf(cdf_lo + (0.5 - cdf_lo) * u), config.mask_ratio_min)
    ratio = MaskedOrder(config).sample_ratio(torch.Generator().manual_seed(seed))
    assert ratio == pytest.approx(expected, rel=0, abs=1e-12)


def test_masked_ratio_distribution_is_centred_high():
    order, g = MaskedOrder(), torch.Generator().manual_seed(0)
    ratios = torch.tensor([order.sample_ratio(g) for _ in range(4000)])
    # N(1, 0.25) truncated to [0.7, 1]: mean = 1 + 0.25 (phi(-1.2) - phi(0)) / (Phi(0) - Phi(-1.2)) = 0.867
    assert ratios.mean().item() == pytest.approx(0.867, abs=0.005)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_masked_plan_positions_match_its_masks(seed):
    plan = MaskedOrder(MaskedOrderConfig(mask_ratio_min=0.2)).plan(3, 11, torch.Generator().manual_seed(seed))
    assert (plan.known.sum(-1) == plan.num_known).all()
    # Boolean indexing lists positions row by row in ascending order: the positions give the same.
    assert torch.equal(plan.positions(known=True), plan.known.nonzero()[:, 1].view(3, -1))
    assert torch.equal(plan.positions(known=False), plan.targets.nonzero()[:, 1].view(3, -1))
