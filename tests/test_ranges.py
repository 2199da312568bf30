"""Every numeric recipe field has a range, checked at load time with one line naming the key and
the allowed values; duplicate YAML keys are refused."""

import dataclasses

import pytest

from carl.config import BackboneConfig, RecipeConfig, TrainConfig, load_recipe
from carl.errors import RecipeError
from carl.plugins import registry
from carl.ranges import unbounded_fields
from dataclasses import dataclass
from typing import Annotated
import annotated_types as at
from carl.errors import FieldError
from carl.ranges import check_ranges

KINDS = ("tokenizers", "orders", "scores", "conditioners", "datasets", "metrics")


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", r"^train\.epochs: 0\.0 is out of range; allowed: > 0$"),
    ("train.max_steps=-5", r"^train\.max_steps: -5 is out of range; allowed: >= 1$"),
    ("train.lr=0", r"^train\.lr: 0\.0 is out of range; allowed: > 0$"),
    ("train.ema_decay=2.0", r"^train\.ema_decay: 2\.0 is out of range; allowed: \[0, 1\)$"),
    ("sample.num_steps=0", r"^sample\.num_steps: 0 is out of range; allowed: >= 1$"),
    ("train.micro_batch=0", r"^train\.micro_batch: 0 is out of range"),
    ("train.log_every=0", r"^train\.log_every: 0 is out of range"),
    ("train.keep_checkpoints=-3", r"^train\.keep_checkpoints: -3 is out of range"),
    ("train.checkpoint_every=0", r"^train\.checkpoint_every: 0 is out of range"),
    ("train.betas=[0.9,1.5]", r"^train\.betas\[1\]: 1\.5 is out of range; allowed: \[0, 1\)$"),
    ("train.train_temperature=[[0,1.0],[5,0]]", r"^train\.train_temperature\[1\]\[1\]: 0\.0 is out of range"),
    ("model.backbone.width=0", r"^model\.backbone\.width: 0 is out of range; allowed: >= 1$"),
    ("model.backbone.heads=3", r"^model\.backbone\.heads: 3 does not divide width 32$"),
    ("model.backbone.dropout=1.0", r"^model\.backbone\.dropout: 1\.0 is out of range; allowed: \[0, 1\)$"),
    ("model.score.num_samples=1", r"^model\.score\.num_samples: 1 is out of range; allowed: >= 2$"),
    ("model.tokenizer.patch=[0]", r"^model\.tokenizer\.patch\[0\]: 0 is out of range"),
    ("model.conditioner.label_drop=1.5", r"^model\.conditioner\.label_drop: 1\.5 is out of range"),
    ("model.order={name: masked, mask_ratio_min: 0}", r"^model\.order\.mask_ratio_min: 0\.0 is out of range; allowed: \(0, 1\]$"),
    ("data.num_samples=0", r"^data\.num_samples: 0 is out of range"),
    ("eval.every_epochs=0", r"^eval\.every_epochs: 0\.0 is out of range"),
    ("model.score={name: diffusion, sample_steps: 2000}", r"^model\.score\.sample_steps: 2000 exceeds train_steps 1000$"),
])
def test_out_of_range_values_fail_at_load_naming_key_and_range(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("tiny", [override])


def test_configs_built_in_python_are_held_to_the_same_ranges():
    with pytest.raises(ValueError, match=r"^lr 0 is out of range; allowed: > 0$"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="heads 5 does not divide width 256"):
        BackboneConfig(heads=5)


def test_the_boundaries_themselves_are_allowed():
    cfg = load_recipe("tiny", ["train.ema_decay=0", "train.warmup_epochs=0", "model.backbone.encoder_depth=0"])
    assert cfg.train.ema_decay == 0.0


def core_configs() -> list[tuple[str, type]]:
    from carl.config import EvalConfig, ReconstructionConfig, SampleConfig, TokenizerEvalConfig, TokenizerRecipeConfig

    found = [(c.__name__, c) for c in (RecipeConfig, TrainConfig, SampleConfig, EvalConfig, BackboneConfig,
                                       TokenizerRecipeConfig, ReconstructionConfig, TokenizerEvalConfig)]
    for kind in KINDS:
        for name, cls in registry(kind).items():
            if hasattr(cls, "Config"):
                found.append((f"{kind}:{name}", cls.Config))
    return found


@pytest.mark.parametrize("name, config", core_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_numeric_field_of_every_core_config_declares_a_range(name, config):
    assert unbounded_fields(config) == []


def test_the_meta_check_sees_an_unbounded_field():
    @dataclasses.dataclass(frozen=True)
    class Loose:
        steps: int = 1
        pairs: tuple[tuple[float, float], ...] = ()
        flag: bool = True
        name: str = "x"

    assert unbounded_fields(Loose) == ["steps", "pairs"]


@pytest.mark.parametrize("text, line, first", [
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", 4, 2),
    ("train: {max_steps: 2}\ndata: toy\ntrain: {max_steps: 3}\n", 3, 1),
])
def test_duplicate_yaml_keys_fail_naming_key_and_lines(tmp_path, text, line, first):
    path = tmp_path / "dup.yaml"
    path.write_text("extends: tiny\n" + text)
    key = "lr" if "lr" in text else "train"
    with pytest.raises(RecipeError, match=rf"dup\.yaml: .*duplicate key '{key}' on line {line + 1} \(first given on line {first + 1}\)$"):
        load_recipe(path)


def test_yaml_merge_keys_may_still_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("extends: tiny\nbase: &b {max_steps: 2, log_every: 1}\ntrain:\n  <<: *b\n  max_steps: 3\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'base'"):  # parsed fine: only the anchor's section is unknown
        load_recipe(path)


def test_duplicate_keys_in_an_override_value_fail():
    with pytest.raises(RecipeError, match="duplicate key 'name'"):
        load_recipe("tiny", ["model.order={name: masked, name: causal}"])


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
