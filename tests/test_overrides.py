"""Dotted overrides and numbers in recipes: a key given once, a component swapped by name, every
number finite and of a size carl can count, in recipes and in configs built in Python alike."""

from dataclasses import dataclass
from typing import Annotated

import annotated_types as at
import pytest

from carl.config import TrainConfig, load_recipe
from carl.errors import FieldError, RecipeError
from carl.ranges import check_ranges


def test_an_override_given_twice_is_refused_naming_both():
    with pytest.raises(RecipeError, match=r"override 'train.lr' is given twice \('train.lr=1e-3' and 'train.lr=2e-3'\)"):
        load_recipe("tiny", ["train.lr=1e-3", "train.lr=2e-3"])


@pytest.mark.parametrize("overrides", [["model.score.name=gaussian", "model.score.sigma=0.5"],
                                       ["model.score.sigma=0.5", "model.score.name=gaussian"]])
def test_a_component_swapped_by_name_starts_from_its_defaults(overrides):
    cfg = load_recipe("tiny", overrides)  # tiny's energy score has alpha, noise_dim, ...: none carry over
    assert cfg.model.score.name == "gaussian" and cfg.model.score.options.sigma == 0.5
    assert cfg.model.score.options.width == 256  # the gaussian head's default, not tiny's energy width 32


def test_the_same_name_keeps_the_component_s_options():
    cfg = load_recipe("tiny", ["model.score.name=energy", "model.score.alpha=1.5"])
    assert cfg.model.score.options.width == 32 and cfg.model.score.options.alpha == 1.5


@pytest.mark.parametrize("override, message", [
    ("train.lr=inf", "train.lr: inf is not a finite number"),
    ("train.lr=.nan", "train.lr: nan is not a finite number"),
    ("sample.cfg=inf", "sample.cfg: inf is not a finite number"),
    ("train.epochs=-.inf", "train.epochs: -inf is not a finite number"),
    ("train.max_steps=100000000000000000000000", r"train.max_steps: 100000000000000000000000 is too large \(at most 2\*\*53\)"),
])
def test_numbers_are_finite_and_countable(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("tiny", [override])


@dataclass(frozen=True)
class Pairs:
    pairs: tuple[tuple[Annotated[float, at.Ge(0)], Annotated[float, at.Gt(0)]], ...] | None = None
    size: Annotated[int, at.Ge(1)] | None = None

    def __post_init__(self):
        check_ranges(self)


def test_ranges_reach_optional_tuples_of_configs_built_in_python():
    assert Pairs(((0.0, 1.0), (3.0, 0.5)), 4).size == 4 and Pairs().pairs is None
    with pytest.raises(FieldError, match=r"pairs\[1\]\[1\] 0.0 is out of range; allowed: > 0"):
        Pairs(((0.0, 1.0), (3.0, 0.0)))
    with pytest.raises(FieldError, match=r"pairs\[0\]\[0\] inf is not a finite number"):
        Pairs(((float("inf"), 1.0),))
    with pytest.raises(FieldError, match="size 0 is out of range"):
        Pairs(size=0)
    with pytest.raises(FieldError, match=r"train_temperature\[0\]\[1\] nan is not a finite number"):
        TrainConfig(train_temperature=((0.0, float("nan")),))


def test_one_diffusion_sampling_step_is_refused_when_the_recipe_is_read():
    with pytest.raises(RecipeError, match=r"model.score.sample_steps: 1 is out of range; allowed: >= 2"):
        load_recipe("tiny", ["model.score={name: diffusion, sample_steps: 1}"])
