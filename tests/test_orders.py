import pytest
import torch
from hypothesis import given, settings, strategies as st

from carl.model import ContinuousAR
from carl.orders import CausalOrder, MaskedOrder, RandomOrder
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


def test_masked_ratio_distribution_is_centred_high():
    order, g = MaskedOrder(), torch.Generator().manual_seed(0)
    ratios = torch.tensor([order.sample_ratio(g) for _ in range(4000)])
    # N(1, 0.25) truncated to [0.7, 1]: mean = 1 + 0.25 (phi(-1.2) - phi(0)) / (Phi(0) - Phi(-1.2)) = 0.867
    assert ratios.mean().item() == pytest.approx(0.867, abs=0.005)


def test_causal_plans():
    plan = CausalOrder().plan(3, 5)
    assert torch.equal(plan.order, torch.arange(5).expand(3, 5)) and plan.targets.all()
    assert RandomOrder().plan(3, 5).targets.all() and RandomOrder.query_next


@pytest.mark.parametrize("order", ["causal", "random"])
def test_causal_attention_never_sees_later_tokens(order):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order)).eval()
    g = torch.Generator().manual_seed(0)
    plan = model.order.plan(2, 8, g)
    ordered = torch.randn(2, 8, 2, requires_grad=True)
    cond = model.conditioner(torch.tensor([0, 1]), 2)
    hidden = model._hidden_causal(ordered, cond, plan.order)  # (B, N, C)
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
        hidden = model._hidden_causal(ordered, model.conditioner(labels, 2), order_used)
    torch.testing.assert_close(torch.stack(seen, 1), hidden, atol=1e-5, rtol=1e-5)


def test_masked_generation_writes_every_position_once(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked")).eval()
    counts = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: counts.append(h.shape[0]) or original(h, **kw))
    model.generate(torch.tensor([0, 1, 2]), num_steps=5, cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert sum(counts) == 3 * 8 and len(counts) == 5
