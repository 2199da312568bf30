import dataclasses

import pytest
import torch

from carl.config import Component
from carl.model import ContinuousAR
from carl.plugins import registry

from helpers import tiny_model_config


def batch(b=4):
    g = torch.Generator().manual_seed(0)
    return {"data": torch.randn(b, 8, 2, generator=g), "condition": torch.arange(b) % 4}


@pytest.mark.parametrize("score", sorted(registry("scores").names()))
def test_every_scoring_rule_trains_and_samples_in_the_model(score):
    torch.manual_seed(0)
    config = tiny_model_config("masked")
    config = dataclasses.replace(config, score=Component(score, registry("scores").get(score).Config()))
    model = ContinuousAR(config)
    loss = model.loss(batch())
    assert torch.isfinite(loss)
    loss.backward()
    out = model.generate(torch.arange(3), num_steps=4, cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 8, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("order", registry("orders").names())
@pytest.mark.parametrize("conditioner", ["class", "none"])
def test_loss_and_generate_for_every_order(order, conditioner):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order, conditioner=conditioner))
    for p in model.score.parameters():  # the generator's output starts at zero, which blocks gradients upstream
        torch.nn.init.normal_(p, std=0.2)
    loss = model(batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.token_proj.weight.grad.abs().sum() > 0
    condition = torch.tensor([0, 3]) if conditioner == "class" else None
    cfg = 2.0 if conditioner == "class" else 1.0
    out = model.generate(condition, batch_size=2, num_steps=4, cfg=cfg, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 8, 2) and torch.isfinite(out).all()
    again = model.generate(condition, batch_size=2, num_steps=4, cfg=cfg, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, again)
    assert model.training  # generate restores the mode


def test_loss_is_computed_on_targets_only(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    plan = model.order.plan(4, 8, torch.Generator().manual_seed(3))
    shapes = []
    original = model.score.loss
    monkeypatch.setattr(model.score, "loss", lambda h, t: shapes.append(h.shape) or original(h, t))
    model.loss(batch(), plan)
    assert shapes == [(int(plan.targets.sum()), 16)]


def test_known_tokens_change_hidden_states_but_targets_do_not():
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked")).eval()
    tokens = torch.randn(1, 8, 2)
    known = torch.tensor([[True, True, False, False, True, False, False, False]])
    cond = model.conditioner(torch.tensor([1]), 1)
    base = model.hidden_bidirectional(tokens, cond, known)
    changed_target = tokens.clone()
    changed_target[0, 2] += 5
    torch.testing.assert_close(model.hidden_bidirectional(changed_target, cond, known), base)
    changed_known = tokens.clone()
    changed_known[0, 0] += 5
    assert not torch.allclose(model.hidden_bidirectional(changed_known, cond, known), base)


def test_linear_cfg_schedule_grows_to_just_below_full_scale(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    scales = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: scales.append(kw["guidance"].scale) or original(h, **kw))
    model.generate(torch.tensor([0]), num_steps=4, cfg=3.0)
    schedule = model.order.schedule(8, 4)
    # MAR/EAR: the masked count after the step, held at >= 1, so the last step is 1 + 2 * 7/8
    assert scales == pytest.approx([1 + 2.0 * min(k, 7) / 8 for k in schedule]) and scales[-1] == 2.75
    scales.clear()
    model.generate(torch.tensor([0]), num_steps=4, cfg=3.0, cfg_schedule="constant")
    assert scales == [3.0] * 4


def test_label_dropout_uses_unconditional_embedding():
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    labels = torch.tensor([0, 1])
    dropped = model.conditioner(labels, 2, drop=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], model.conditioner(None, 1)[0])
    torch.testing.assert_close(dropped[1], model.conditioner(labels, 2)[1])
    with pytest.raises(ValueError, match="class labels must lie in"):
        model.conditioner(torch.tensor([4]), 1)


def test_prompted_causal_generation_continues_the_prompt():
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("causal", conditioner="none")).eval()
    prompt = torch.randn(3, 5, 2)
    out = model.generate(batch_size=3, prompt=prompt, generator=torch.Generator().manual_seed(1), return_tokens=True)
    assert out.shape == (3, 8, 2) and torch.equal(out[:, :5], prompt)
    # The first generated token is the head's draw at the teacher-forced hidden state after the prompt.
    cond = model.conditioner(None, 3)
    hidden = model.hidden_causal(out, cond, torch.arange(8).expand(3, 8))
    expected = model.score.sample(hidden[:, 5], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:, 5], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the causal order"):
        ContinuousAR(tiny_model_config("masked")).generate(prompt=prompt)
