from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings, strategies as st

from carl.model import ContinuousAR
from carl.orders import CausalOrder, MaskedOrder, Plan, RandomOrder, random_permutations
from carl.orders.masked import MaskedOrderConfig
from carl.plugins import registry

from helpers import tiny_model_config


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


def test_masked_schedule_follows_the_cosine():
    assert MaskedOrder().schedule(256, 64)[:3] == [1, 2, 3]  # cos starts flat: one token per step
    assert MaskedOrder().schedule(256, 4) == [256 - 236, 256 - 181, 256 - 97, 256]


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


def test_causal_plans():
    plan = CausalOrder().plan(3, 5)
    assert torch.equal(plan.order, torch.arange(5).expand(3, 5)) and plan.targets.all()
    assert RandomOrder().plan(3, 5).targets.all() and RandomOrder.query_next


def test_plan_positions_list_known_and_target_positions_in_ascending_order():
    order = torch.tensor([[3, 0, 2, 1, 4], [1, 4, 0, 3, 2]])
    plan = Plan(order, order.argsort(-1) < 2, num_known=2)  # rows know their first two positions
    assert plan.positions(known=True).tolist() == [[0, 3], [1, 4]]
    assert plan.positions(known=False).tolist() == [[1, 2, 4], [0, 2, 3]]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_masked_plan_positions_match_its_masks(seed):
    plan = MaskedOrder(MaskedOrderConfig(mask_ratio_min=0.2)).plan(3, 11, torch.Generator().manual_seed(seed))
    assert (plan.known.sum(-1) == plan.num_known).all()
    # Boolean indexing lists positions row by row in ascending order: the positions give the same.
    assert torch.equal(plan.positions(known=True), plan.known.nonzero()[:, 1].view(3, -1))
    assert torch.equal(plan.positions(known=False), plan.targets.nonzero()[:, 1].view(3, -1))


def test_plan_positions_need_the_same_known_count_in_every_row():
    plan = Plan(torch.arange(4).expand(2, 4), torch.tensor([[True, False, False, False], [True, True, False, False]]))
    with pytest.raises(ValueError, match="^this plan does not know the same number of positions in every row"):
        plan.positions(known=True)


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


@pytest.mark.parametrize("seeded", [False, True])
def test_random_permutations_ignore_the_default_device(seeded):
    expected = random_permutations(4, 9, torch.Generator().manual_seed(0), "cpu")
    generator = torch.Generator().manual_seed(0) if seeded else None
    with torch.device("meta"):  # noise is drawn on the generator's device, or the one asked for
        perms = random_permutations(4, 9, generator, "cpu")
    assert perms.device.type == "cpu"
    assert torch.equal(perms.sort(-1).values, torch.arange(9).expand(4, 9))
    if seeded:
        assert torch.equal(perms, expected)


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


@pytest.mark.parametrize("order", ["causal", "random"])
def test_causal_attention_never_sees_later_tokens(order):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order)).eval()
    g = torch.Generator().manual_seed(0)
    plan = model.order.plan(2, 8, g)
    ordered = torch.randn(2, 8, 2, requires_grad=True)
    cond = model.conditioner(torch.tensor([0, 1]), 2)
    hidden = model.hidden_causal(ordered, cond, plan.order)  # (B, N, C)
    probe = torch.randn(hidden.shape[-1])  # a plain sum of a LayerNorm output would be constant
    for i in range(8):
        (grad,) = torch.autograd.grad((hidden[:, i] @ probe).sum(), ordered, retain_graph=True)
        assert grad[:, i:].abs().max() == 0, f"step {i} sees a token at or after itself"
        if i > 0:
            assert grad[:, :i].abs().sum() > 0


@pytest.mark.parametrize("order", ["causal", "random"])
def test_kv_cache_generation_matches_teacher_forcing(order, monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order)).eval()
    seen = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: seen.append(h.clone()) or original(h, **kw))
    labels = torch.tensor([1, 3])
    tokens = model.generate(labels, return_tokens=True, generator=torch.Generator().manual_seed(5))
    order_used = model.order.generation_order(2, 8, torch.Generator().manual_seed(5))
    ordered = torch.gather(tokens, 1, order_used[..., None].expand_as(tokens))
    with torch.no_grad():
        hidden = model.hidden_causal(ordered, model.conditioner(labels, 2), order_used)
    torch.testing.assert_close(torch.stack(seen, 1), hidden, atol=1e-5, rtol=1e-5)


def test_masked_generation_writes_every_position_once(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked")).eval()
    counts = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: counts.append(h.shape[0]) or original(h, **kw))
    model.generate(torch.tensor([0, 1, 2]), num_steps=5, cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert sum(counts) == 3 * 8 and len(counts) == 5
