"""Every registered generation order keeps the contract: a plan is a permutation whose targets are
the unknown positions, schedules grow strictly to N, default configs, and plans made on the
requested device from the generator's stream."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from carl.plugins import registry


@pytest.mark.parametrize("name", registry("orders").names())
def test_plan_is_a_permutation_and_targets_are_the_unknown(name):
    order = registry("orders").get(name)()
    g = torch.Generator().manual_seed(0)
    plan = order.plan(16, 12, g)
    assert plan.order.shape == plan.known.shape == (16, 12)
    assert torch.equal(plan.order.sort(dim=-1).values, torch.arange(12).expand(16, 12))
    assert torch.equal(plan.targets, ~plan.known)
    again = order.plan(16, 12, torch.Generator().manual_seed(0))
    assert torch.equal(again.order, plan.order) and torch.equal(again.known, plan.known)


@pytest.mark.parametrize("name", registry("orders").names())
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), steps=st.integers(1, 400))
def test_schedule_strictly_increases_to_n(name, n, steps):
    schedule = registry("orders").get(name)().schedule(n, steps)
    assert schedule[-1] == n and schedule[0] >= 1
    assert all(a < b for a, b in zip(schedule, schedule[1:]))
    if name == "masked":
        assert len(schedule) <= steps


@pytest.mark.parametrize("name", registry("orders").names())
def test_an_order_without_config_uses_the_default_config(name):
    cls = registry("orders").get(name)
    assert cls().config == cls.Config()


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("name", registry("orders").names())
def test_plans_are_made_on_the_requested_device(name, seeded):
    """On another device (here ``meta``: shapes only) a plan draws what it draws on the CPU from the
    generator, so later draws from it do not depend on the device."""
    order = registry("orders").get(name)()
    on_cpu, on_meta = (torch.Generator().manual_seed(0) if seeded else None for _ in range(2))
    cpu = order.plan(3, 6, on_cpu)
    meta = order.plan(3, 6, on_meta, device="meta")
    assert meta.order.device.type == meta.known.device.type == "meta"
    assert meta.order.shape == meta.known.shape == (3, 6)
    assert order.generation_order(3, 6, on_meta, device="meta").device.type == "meta"
    if seeded:
        assert meta.num_known == cpu.num_known
        order.generation_order(3, 6, on_cpu)
        assert torch.equal(on_cpu.get_state(), on_meta.get_state())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", registry("orders").names())
def test_plans_draw_on_the_generators_device(name):
    order = registry("orders").get(name)()
    cpu_generator, cuda_generator = torch.Generator().manual_seed(0), torch.Generator("cuda").manual_seed(0)
    expected = order.plan(4, 9, torch.Generator().manual_seed(0))
    with torch.device("cuda"):  # a CPU generator still draws on the CPU
        plan = order.plan(4, 9, cpu_generator)
    assert torch.equal(plan.order, expected.order) and torch.equal(plan.known, expected.known)
    plan = order.plan(4, 9, cuda_generator, device="cuda")  # a CUDA generator draws on the GPU
    assert plan.order.is_cuda and torch.equal(plan.order.sort(-1).values.cpu(), torch.arange(9).expand(4, 9))
