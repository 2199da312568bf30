"""Head sampler options (the diffusion and flow heads' steps and solver) change on a trained head
without retraining, and a head switched that way samples exactly as one built with the option."""

import pytest
import torch

from carl.errors import FieldError
from carl.plugins import registry

HIDDEN, TOKEN = 4, 3
HEADS = {"diffusion": ({"sample_steps": 10, "clip_x0": 2.0}, {"sample_steps": 4}),
         "flow": ({"sample_steps": 10}, {"sample_steps": 4, "solver": "midpoint"})}


def build(name, **options):
    cls = registry("scores").get(name)
    rule = cls(cls.Config(width=16, depth=2, **options), hidden_dim=HIDDEN, token_dim=TOKEN)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return rule


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_switched_head_samples_as_one_built_with_the_option(name):
    built_with, switch_to = HEADS[name]
    switched, reference = build(name, **built_with), build(name, **{**built_with, **switch_to})
    reference.load_state_dict(switched.state_dict())  # the same trained weights
    hidden = torch.randn(5, HIDDEN)
    before = switched.sample(hidden, generator=torch.Generator().manual_seed(1))
    switched.set_sampler(**switch_to)
    after = switched.sample(hidden, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(after, reference.sample(hidden, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(before, after, atol=1e-3)  # the option does something
    assert switched.config == reference.config


@pytest.mark.parametrize("name,options,message", [
    ("diffusion", {"sample_steps": 1}, "sample_steps 1 is out of range; allowed: >= 2"),
    ("diffusion", {"sample_steps": 1001}, "sample_steps 1001 exceeds train_steps 1000"),
    ("flow", {"sample_steps": -3}, "sample_steps -3 is out of range; allowed: >= 1"),
])
def test_nonsense_steps_are_refused_and_leave_the_head_as_it_was(name, options, message):
    rule = build(name, **HEADS[name][0])
    config = rule.config
    with pytest.raises(FieldError, match=f"^{message}$"):
        rule.set_sampler(**options)
    assert rule.config == config


def test_diffusion_schedule_follows_the_heads_device():
    rule = build("diffusion", **HEADS["diffusion"][0]).to(torch.float64)
    rule.set_sampler(sample_steps=3)
    assert len(rule.sample_schedule) == 3 and rule.sample_schedule.timesteps.tolist() == [0, 500, 999]
    assert rule.sample_schedule.sqrt_alpha_bar.device == rule.net.input_proj.weight.device
