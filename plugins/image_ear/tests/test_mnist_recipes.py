"""The MNIST recipes that swap the scoring rule: they load, and refuse nonsense sampler options."""

import pytest

from carl.config import load_recipe, to_dict
from carl.errors import RecipeError


def test_mnist_flow_is_mnist_ear_with_the_flow_head():
    ear, flow = load_recipe("mnist-ear"), load_recipe("mnist-flow")
    assert flow.model.score.name == "flow" and flow.model.score.options.solver in ("euler", "midpoint")
    assert to_dict(flow.model.backbone) == to_dict(ear.model.backbone) and to_dict(flow.train) == to_dict(ear.train)


@pytest.mark.parametrize("recipe,override,message", [
    ("mnist-flow", "model.score.sample_steps=0", "model.score.sample_steps: 0 is out of range; allowed: >= 1"),
    ("mnist-flow", "model.score.solver=rk4", "model.score.solver"),
    ("mnist-diffusion", "model.score.sample_steps=0", "model.score.sample_steps: 0 is out of range; allowed: >= 2"),
])
def test_nonsense_head_sampler_options_fail_at_recipe_load(recipe, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe, [override])


def test_sampler_options_are_recipe_overrides():
    flow = load_recipe("mnist-flow", ["model.score.solver=midpoint", "model.score.sample_steps=8"]).model.score.options
    assert (flow.solver, flow.sample_steps) == ("midpoint", 8)
