"""Generation sees exactly what training sees. A spy on the scoring rule's sampler records the
hidden states each generation step samples from; they must equal the hidden states of the
training path (teacher forcing for causal orders, the boolean-mask path for masked orders) on the
tokens that generation wrote, and the sampled values must land at the positions of that step."""

import pytest
import torch

from carl.model import ContinuousAR
from carl.orders.base import Plan

from helpers import tiny_model_config

TOL = dict(rtol=1e-5, atol=1e-5)


def record(model, monkeypatch):
    """Spies on the generation order and on every draw: ``(order, [(hidden, uncond, drawn)])``."""
    seen = {"order": None, "draws": []}
    original_order, original_sample = model.order.generation_order, model.score.sample

    def generation_order(*args, **kwargs):
        seen["order"] = original_order(*args, **kwargs)
        return seen["order"]

    def sample(hidden, **kwargs):
        drawn = original_sample(hidden, **kwargs)
        guidance = kwargs["guidance"]
        seen["draws"].append((hidden.clone(), None if guidance is None else guidance.uncond.clone(), drawn.clone()))
        return drawn

    monkeypatch.setattr(model.order, "generation_order", generation_order)
    monkeypatch.setattr(model.score, "sample", sample)
    return seen


def model_for(order, **backbone):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order, **backbone)).eval()
    with torch.no_grad():  # positions and queries start at zero in some inits: make every one count
        for name, p in model.backbone.named_parameters():
            if "embed" in name or "mask_token" in name:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("order", ["causal", "random"])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("static", [False, True])
def test_causal_generation_samples_from_the_teacher_forced_hidden_states(order, cfg, static, monkeypatch):
    model, labels = model_for(order), torch.tensor([0, 3, 1])
    seen = record(model, monkeypatch)
    tokens = model.generate(labels, cfg=cfg, generator=torch.Generator().manual_seed(1), return_tokens=True,
                            static_shapes=static)
    order_, draws = seen["order"], seen["draws"]
    assert len(draws) == model.tokenizer.num_tokens  # one token per step
    ordered = torch.gather(tokens, 1, order_[..., None].expand_as(tokens))
    with torch.no_grad():
        want = model.hidden_causal(ordered, model.conditioner(labels, 3), order_)
        want_uncond = model.hidden_causal(ordered, model.conditioner(None, 3), order_)
    for i, (hidden, uncond, drawn) in enumerate(draws):
        torch.testing.assert_close(hidden, want[:, i], **TOL, msg=f"step {i}")
        torch.testing.assert_close(drawn, ordered[:, i], rtol=0, atol=0, msg=f"step {i}")
        if cfg == 1.0:
            assert uncond is None
        else:
            torch.testing.assert_close(uncond, want_uncond[:, i], **TOL, msg=f"step {i}")


@pytest.mark.parametrize("given", [1, 3])
def test_a_prompt_is_kept_and_generation_goes_on_from_it_as_in_training(given, monkeypatch):
    model, labels = model_for("causal"), torch.tensor([2, 0])
    prompt = torch.randn(2, given, 2)
    seen = record(model, monkeypatch)
    tokens = model.generate(labels, cfg=2.0, prompt=prompt, generator=torch.Generator().manual_seed(0), return_tokens=True)
    assert torch.equal(tokens[:, :given], prompt)
    draws = seen["draws"]
    assert len(draws) == model.tokenizer.num_tokens - given  # the prompt is read, not drawn
    order = torch.arange(8).expand(2, 8)
    with torch.no_grad():
        want = model.hidden_causal(tokens, model.conditioner(labels, 2), order)
        want_uncond = model.hidden_causal(tokens, model.conditioner(None, 2), order)
    for step, (hidden, uncond, drawn) in enumerate(draws, start=given):
        torch.testing.assert_close(hidden, want[:, step], **TOL, msg=f"step {step}")
        torch.testing.assert_close(uncond, want_uncond[:, step], **TOL, msg=f"step {step}")
        assert torch.equal(drawn, tokens[:, step])


@pytest.mark.parametrize("encoder_depth", [0, 1])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_masked_generation_samples_from_the_hidden_states_of_the_boolean_mask_path(encoder_depth, cfg, monkeypatch):
    model, labels = model_for("masked", encoder_depth=encoder_depth), torch.tensor([1, 2])
    seen = record(model, monkeypatch)
    tokens = model.generate(labels, num_steps=4, cfg=cfg, generator=torch.Generator().manual_seed(2), return_tokens=True)
    order, draws = seen["order"], seen["draws"]
    schedule = model.order.schedule(8, 4)
    assert len(draws) == len(schedule)
    ranks = order.argsort(dim=1)
    known_before = 0
    for known_after, (hidden, uncond, drawn) in zip(schedule, draws, strict=True):
        known = ranks < known_before  # what was written before this step, by position
        new = ((ranks >= known_before) & (ranks < known_after))  # what this step writes
        visible = torch.where(known[..., None], tokens, torch.zeros_like(tokens))
        with torch.no_grad():
            want = model.hidden_bidirectional(visible, model.conditioner(labels, 2), known)[new]
            want_uncond = model.hidden_bidirectional(visible, model.conditioner(None, 2), known)[new]
        torch.testing.assert_close(hidden, want, **TOL, msg=f"{known_after} known")
        torch.testing.assert_close(drawn, tokens[new], rtol=0, atol=0)
        if cfg != 1.0:
            torch.testing.assert_close(uncond, want_uncond, **TOL)
        known_before = known_after


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_training_gathers_the_same_targets_as_the_boolean_mask(encoder_depth):
    model = model_for("masked", encoder_depth=encoder_depth)
    tokens, cond = torch.randn(3, 8, 2), model.conditioner(torch.tensor([0, 1, 2]), 3)
    plan = model.order.plan(3, 8, torch.Generator().manual_seed(0))
    assert plan.num_known is not None and 0 < plan.num_known < 8
    with torch.no_grad():
        hidden, targets = model.hidden_at_targets(tokens, cond, plan)
        by_mask, mask_targets = model.hidden_at_targets(tokens, cond, Plan(plan.order, plan.known))  # num_known unset
        reference = model.hidden_bidirectional(tokens, cond, plan.known)[plan.targets]
    torch.testing.assert_close(hidden, reference, **TOL)
    torch.testing.assert_close(by_mask, reference, **TOL)
    assert torch.equal(targets, tokens[plan.targets]) and torch.equal(mask_targets, targets)
