import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import annotated_types as at
import pytest
import yaml

import carl.config
from carl.conditioners import ClassConditioner, ClassConditionerConfig
from carl.config import BackboneConfig, Component, DuplicateKeyError, RecipeConfig, SampleConfig, TokenizerRecipeConfig, TrainConfig, UniqueKeyLoader, apply_overrides, component, dump_recipe, from_dict, load_recipe, merge_recipe, parse_yaml, recipe_class, resolve_recipe_path, to_dict
from carl.errors import RecipeError
from carl.orders import CausalOrder
from carl.plugins import load_plugins, recipe_files, registry
from carl.scores import EnergyScoreConfig, MixtureScoreConfig
from carl.tokenizers import PatchTokenizerConfig


def base() -> dict:
    return {
        "model": {
            "tokenizer": {"name": "patch", "shape": [8, 2], "patch": [1]},
            "score": {"name": "energy", "alpha": 1.5},
        },
        "data": {"name": "toy"},
    }


def test_valid_recipe_builds_typed_tree():
    cfg = from_dict(RecipeConfig, base())
    assert isinstance(cfg.model.score.options, EnergyScoreConfig) and cfg.model.score.options.alpha == 1.5
    assert cfg.model.order.name == "masked"  # default
    assert from_dict(RecipeConfig, to_dict(cfg)) == cfg


def test_unknown_key_names_path_and_valid_keys():
    data = base()
    data["train"] = {"lrr": 1e-4}
    with pytest.raises(RecipeError) as err:
        from_dict(RecipeConfig, data)
    message = str(err.value)
    assert "'train.lrr'" in message and "did you mean 'lr'" in message and "base_lr" in message


def test_unknown_component_option_names_path():
    data = base()
    data["model"]["score"]["alfa"] = 1.0
    with pytest.raises(RecipeError, match=r"model\.score\.alfa.*did you mean .alpha.*valid keys: .*alpha"):
        from_dict(RecipeConfig, data)


def test_unknown_component_lists_available():
    data = base()
    data["model"]["order"] = {"name": "zigzag"}
    with pytest.raises(RecipeError, match=r"model\.order\.name: unknown order 'zigzag'; available: causal, masked, random"):
        from_dict(RecipeConfig, data)


@pytest.mark.parametrize(
    "section,key,value,match",
    [
        ("train", "global_batch", "many", r"train\.global_batch: expected int, got str"),
        ("train", "betas", [0.9], r"train\.betas: expected 2 values"),
        ("train", "lr_schedule", "linear", r"train\.lr_schedule: 'linear' is not one of 'constant', 'cosine'"),
        ("sample", "cfg", True, r"sample\.cfg: expected float, got bool"),
    ],
)
def test_wrong_types(section, key, value, match):
    data = base()
    data[section] = {key: value}
    with pytest.raises(RecipeError, match=match):
        from_dict(RecipeConfig, data)


def test_an_unquoted_no_is_the_word_no():
    """Regression: YAML 1.1 reads `train.mixed_precision=no` (and `mixed_precision: no` in a file)
    as False, which the recipe refused ("False is not one of 'no', ..."), so fp32 could not be asked for."""
    cfg = from_dict(RecipeConfig, apply_overrides(base(), ["train.mixed_precision=no"]))
    assert cfg.train.mixed_precision == "no"
    data = base()
    data["train"] = parse_yaml("mixed_precision: no\n")
    assert from_dict(RecipeConfig, data).train.mixed_precision == "no"
    data["train"] = {"mixed_precision": True}  # no option spells true
    with pytest.raises(RecipeError, match=r"train\.mixed_precision: True is not one of"):
        from_dict(RecipeConfig, data)


def test_invalid_value_inside_component():
    data = base()
    data["model"]["score"]["alpha"] = 3.0
    with pytest.raises(RecipeError, match=r"model\.score\.alpha: 3\.0 is out of range; allowed: \(0, 2\]"):
        from_dict(RecipeConfig, data)


def test_overrides():
    data = apply_overrides(base(), ["train.lr=1e-4", "model.score.alpha=1.2", "model.order=causal", "sample.cfg=3"])
    cfg = from_dict(RecipeConfig, data)
    assert cfg.train.lr == 1e-4 and cfg.model.score.options.alpha == 1.2 and cfg.sample.cfg == 3.0
    assert cfg.model.order.name == "causal"
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides(base(), ["train.lr"])


def test_shipped_recipes_validate_and_round_trip():
    recipes = recipe_files()
    assert "tiny" in recipes
    for name in recipes:
        cfg = load_recipe(name)
        assert from_dict(type(cfg), __import__("yaml").safe_load(dump_recipe(cfg))) == cfg  # AR and tokenizer recipes


def test_unknown_recipe_lists_shipped():
    with pytest.raises(RecipeError, match="shipped recipes: .*tiny"):
        load_recipe("no-such-recipe")


def test_extends_merges_sections_and_replaces_a_renamed_component(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "model:\n  tokenizer: {name: patch, shape: [8, 2], patch: [1]}\n"
        "  score: {name: energy, alpha: 1.5, width: 32}\n  backbone: {width: 48, depth: 3}\n"
        "data: {name: toy}\ntrain: {epochs: 7}\noutput: runs/parent\n"
    )
    (tmp_path / "child.yaml").write_text(
        "extends: parent.yaml\nmodel:\n  score: {name: gmm, components: 3}\n  backbone: {depth: 2}\n"
    )
    (tmp_path / "sibling.yaml").write_text("extends: parent.yaml\nmodel:\n  score: {alpha: 1.2}\n")
    child = load_recipe(tmp_path / "child.yaml")
    assert child.model.score.name == "gmm" and child.model.score.options.components == 3
    assert child.model.backbone.width == 48 and child.model.backbone.depth == 2  # merged key by key
    assert child.train.epochs == 7 and child.output == "runs/child"  # the parent's output is not inherited
    sibling = load_recipe(tmp_path / "sibling.yaml")
    assert sibling.model.score.options.alpha == 1.2 and sibling.model.score.options.width == 32


def test_extends_cycle_and_missing_parent_are_clear(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(RecipeError, match="no recipe file or shipped recipe named 'nowhere'"):
        load_recipe(tmp_path / "c.yaml")


def test_override_into_a_shorthand_component_keeps_its_name():
    data = base()
    data["model"]["score"] = "energy"  # shorthand for {name: energy}
    cfg = from_dict(RecipeConfig, apply_overrides(data, ["model.score.alpha=1.5", "model.score.width=24"]))
    assert cfg.model.score.name == "energy"
    assert cfg.model.score.options.alpha == 1.5 and cfg.model.score.options.width == 24
    data = base()
    data["model"]["order"] = "causal"
    with pytest.raises(RecipeError, match=r"model\.order\.alpha"):  # the shorthand's own config validates it
        from_dict(RecipeConfig, apply_overrides(data, ["model.order.alpha=1"]))


def test_override_into_a_shorthand_component_of_a_shipped_recipe(tmp_path):
    (tmp_path / "short.yaml").write_text(
        "model:\n  tokenizer: {name: patch, shape: [8, 2], patch: [1]}\n  score: energy\ndata: toy\n"
    )
    cfg = load_recipe(tmp_path / "short.yaml", ["model.score.alpha=1.5", "data.num_samples=64"])
    assert cfg.model.score.name == "energy" and cfg.model.score.options.alpha == 1.5
    assert cfg.data.name == "toy" and cfg.data.options.num_samples == 64


def test_extends_with_a_shorthand_of_the_same_component_keeps_the_parents_options(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "model:\n  tokenizer: {name: patch, shape: [8, 2], patch: [1]}\n  score: {name: energy, alpha: 1.5}\n"
        "data: {name: toy}\n"
    )
    (tmp_path / "same.yaml").write_text("extends: parent.yaml\nmodel:\n  score: energy\n")
    (tmp_path / "other.yaml").write_text("extends: parent.yaml\nmodel:\n  score: gmm\n")
    assert load_recipe(tmp_path / "same.yaml").model.score.options.alpha == 1.5  # the name does not change
    other = load_recipe(tmp_path / "other.yaml").model.score
    assert other.name == "gmm" and other.options == MixtureScoreConfig()  # a new name: replaced whole


# ---------------------------------------------------------------------------------------------
# Components


def test_a_component_builds_its_registered_class_with_its_options_and_the_context():
    conditioner = Component("class", ClassConditionerConfig(num_classes=3)).build("conditioners", width=8)
    assert isinstance(conditioner, ClassConditioner) and conditioner.config.num_classes == 3
    assert conditioner.class_emb.embedding_dim == 8  # the context (`width=`) reaches the constructor


def test_a_component_field_names_its_registry_and_its_optional_default():
    @dataclass(frozen=True, kw_only=True)
    class Parts:  # as a plugin's config would declare its parts
        order: Component = component("orders")  # no default: required
        score: Component = component("scores", "gmm")

    assert Parts(order=Component("causal")).score == Component("gmm", MixtureScoreConfig())
    with pytest.raises(TypeError, match="order"):
        Parts()
    parts = from_dict(Parts, {"order": "causal", "score": {"name": "energy", "alpha": 1.5}})
    assert parts.order == Component("causal", CausalOrder.Config())
    assert parts.score == Component("energy", EnergyScoreConfig(alpha=1.5))
    with pytest.raises(RecipeError, match=r"^order: required key is missing$"):
        from_dict(Parts, {})


class PlainOrder:
    """An order registered without a ``Config`` class: it takes no options."""

    def __init__(self, options, **context):
        self.options = options


@pytest.fixture
def plain_order():
    registry("orders").register("plain", PlainOrder, "tests")
    yield
    load_plugins(force=True)  # the registries as the plugins fill them


def test_a_component_without_a_config_class_takes_no_options(plain_order):
    @dataclass(frozen=True)
    class Parts:
        order: Component = component("orders", "plain")

    assert to_dict(Parts()) == {"order": {"name": "plain"}}  # the default needs no options
    assert from_dict(Parts, {"order": "plain"}) == Parts()
    assert isinstance(Parts().order.build("orders"), PlainOrder)
    with pytest.raises(RecipeError, match=r"^unknown recipe key 'order\.speed'"):
        from_dict(Parts, {"order": {"name": "plain", "speed": 2}})


# ---------------------------------------------------------------------------------------------
# Errors name the key path


def with_value(dotted: str, value) -> dict:
    """``base()`` with the value at a dotted key path replaced."""
    data = base()
    *sections, last = dotted.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("train", 5, r"^train: expected a mapping, got int 5$"),
        ("train.max_steps", "many", r"^train\.max_steps: expected int, got str 'many'$"),  # an optional value
        ("train.betas", 0.9, r"^train\.betas: expected a list, got float 0\.9$"),
        ("train.betas", [0.9, 1.5], r"^train\.betas\[1\]: 1\.5 is out of range; allowed: \[0, 1\)$"),
        ("train.train_temperature", [[0, 1.0], "hot"], r"^train\.train_temperature\[1\]: expected a list, got str 'hot'$"),
        ("model.backbone", {"width": 30, "heads": 4}, r"^model\.backbone\.heads: 4 does not divide width 30$"),
        ("model.tokenizer.patch", [3], r"^model\.tokenizer: patch \(3,\) does not divide the sample shape \(8, 2\)$"),
        ("model.order", {"seed": 1}, r"^model\.order: expected a mapping with a 'name' key \(available: causal, masked, random\)$"),
    ],
)
def test_a_wrong_value_is_named_by_its_key_path(key, value, match):
    with pytest.raises(RecipeError, match=match):
        from_dict(RecipeConfig, with_value(key, value))


@pytest.mark.parametrize(
    "cls,data,match",
    [
        (RecipeConfig, [1, 2], r"^recipe: expected a mapping, got list \[1, 2\]$"),
        (BackboneConfig, {"width": 30, "heads": 4}, r"^heads: 4 does not divide width 30$"),
        (PatchTokenizerConfig, {"shape": [8, 2], "patch": [3]}, r"^recipe: patch \(3,\) does not divide"),
    ],
)
def test_a_wrong_value_at_the_top_level_is_named_without_a_path(cls, data, match):
    with pytest.raises(RecipeError, match=match):
        from_dict(cls, data)


@pytest.mark.parametrize("section,key", [("model", "tokenizer"), (None, "data")])
def test_a_missing_required_key_is_named_by_its_path(section, key):
    data = base()
    del (data[section] if section else data)[key]
    path = f"{section}.{key}" if section else key
    with pytest.raises(RecipeError, match=rf"^{re.escape(path)}: required key is missing$"):
        from_dict(RecipeConfig, data)


@pytest.mark.parametrize(
    "data,path,hint,cls",
    [
        ({"modle": {}}, "modle", " (did you mean 'model'?)", RecipeConfig),
        ({"sample": {"zzz": 1}}, "sample.zzz", "", SampleConfig),  # nothing close: no hint
    ],
)
def test_an_unknown_key_lists_every_valid_key(data, path, hint, cls):
    with pytest.raises(RecipeError) as err:
        from_dict(RecipeConfig, data)
    valid = ", ".join(f.name for f in dataclasses.fields(cls))
    assert str(err.value) == f"unknown recipe key '{path}'{hint}; valid keys: {valid}"


def test_ranges_are_checked_for_a_config_that_does_not_check_them_itself():
    @dataclass(frozen=True)
    class Knob:  # declares ranges but has no __post_init__ calling check_ranges
        gain: Annotated[float, at.Gt(0)] = 1.0
        steps: Annotated[int, at.Ge(1)] | None = None

    assert from_dict(Knob, {"gain": 2, "steps": None}) == Knob(gain=2.0)
    with pytest.raises(RecipeError, match=r"^gain: -1\.0 is out of range; allowed: > 0$"):
        from_dict(Knob, {"gain": -1})
    with pytest.raises(RecipeError, match=r"^steps: 0 is out of range; allowed: >= 1$"):
        from_dict(Knob, {"steps": 0})


class Metres:
    """A type annotation that is an object, not a class: it has no ``__name__``."""

    def __repr__(self) -> str:
        return "metres"


def test_a_wrong_type_names_an_annotation_without_a_name_by_its_repr():
    @dataclass(frozen=True)
    class Span:
        length: Metres() = 0

    with pytest.raises(RecipeError, match=r"^length: expected metres, got str 'far'$"):
        from_dict(Span, {"length": "far"})


# ---------------------------------------------------------------------------------------------
# YAML


@pytest.mark.parametrize(
    "text,match",
    [
        ("a: 1\nb: 2\na: 3\n", r"duplicate key 'a' on line 3 \(first given on line 1\)"),
        ("base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n  y: 3\n", r"duplicate key 'y' on line 5 \(first given on line 4\)"),
        ("? [1]\n: x\nb: 1\nb: 2\n", r"duplicate key 'b' on line 4 \(first given on line 3\)"),  # past an unhashable key
    ],
)
def test_parse_yaml_refuses_a_key_given_twice(text, match):
    with pytest.raises(DuplicateKeyError, match=match):
        parse_yaml(text)


def test_parse_yaml_lets_a_merge_key_be_overridden():
    assert parse_yaml("base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n")["derived"] == {"x": 1, "y": 3}


@pytest.mark.parametrize("text", ["? [1]\n: x\n", "? &k [1, *k]\n: x\n"])  # an unhashable, a recursive key
def test_parse_yaml_refuses_what_safe_load_refuses_with_its_message(text):
    with pytest.raises(yaml.YAMLError) as expected:
        yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError) as got:
        parse_yaml(text)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("deep", [False, True])
def test_unique_key_loader_constructs_mappings_like_the_safe_loader(deep):
    """A custom tag's constructor sees what SafeLoader would give it, with nested values only if deep."""

    def seen_by_a_tag_constructor(base_loader: type) -> str:
        loader = type("Loader", (base_loader,), {})
        kwargs = {"deep": True} if deep else {}
        loader.add_constructor("!seen", lambda self, node: repr(self.construct_mapping(node, **kwargs)))
        return yaml.load("!seen {a: {b: [1, 2]}}", Loader=loader)

    seen = seen_by_a_tag_constructor(UniqueKeyLoader)
    assert seen == seen_by_a_tag_constructor(yaml.SafeLoader) and ("[1, 2]" in seen) == deep


# ---------------------------------------------------------------------------------------------
# Overrides, files, dumping


def test_an_override_value_may_contain_an_equals_sign():
    assert apply_overrides({}, ["output=runs/lr=1e-3"]) == {"output": "runs/lr=1e-3"}


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr.max=1", r"^override 'train\.lr\.max=1': 'lr' is not a section$"),
        ("train.lr=[1", r"^override 'train\.lr=\[1': not valid YAML: "),
    ],
)
def test_a_bad_override_is_named(override, match):
    with pytest.raises(RecipeError, match=match):
        apply_overrides({"train": {"lr": 0.1}}, [override])


def test_a_shorthand_component_keeps_its_name_when_an_extending_recipe_adds_options():
    merged = merge_recipe({"model": {"score": "energy", "order": "causal"}}, {"model": {"score": {"alpha": 1.5}}})
    assert merged == {"model": {"score": {"name": "energy", "alpha": 1.5}, "order": "causal"}}


def test_a_shipped_recipe_is_found_by_its_name_or_its_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = recipe_files()["tiny"]
    assert resolve_recipe_path("tiny") == shipped and resolve_recipe_path("tiny.yaml") == shipped
    (tmp_path / "tiny.yaml").write_text("data: toy\n")
    assert resolve_recipe_path("tiny.yaml") == Path("tiny.yaml")  # a file of that name comes first


def test_an_unknown_recipe_lists_every_shipped_recipe_or_none(monkeypatch):
    with pytest.raises(RecipeError) as err:
        resolve_recipe_path("no-such-recipe")
    assert str(err.value).endswith(f"; shipped recipes: {', '.join(recipe_files())}")
    monkeypatch.setattr(carl.config, "recipe_files", dict)  # no recipe folder registered
    with pytest.raises(RecipeError, match=r"; shipped recipes: \(none\)$"):
        resolve_recipe_path("no-such-recipe")


@pytest.mark.parametrize(
    "text,match",
    [
        ("model: [1\n", "not valid YAML"),
        ("train: {}\ntrain: {}\n", "not valid YAML: duplicate key 'train' on line 2"),
        ("- model\n- data\n", "a recipe is a mapping of sections, got list$"),
    ],
)
def test_a_malformed_recipe_file_is_named(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}: {match}"):
        load_recipe(path)


@pytest.mark.parametrize(
    "sections,cls",
    [
        (("tokenizer", "data"), TokenizerRecipeConfig),
        (("model", "data"), RecipeConfig),
        (("data",), RecipeConfig),
        (("model", "tokenizer", "data"), RecipeConfig),  # then `tokenizer` is an unknown key
    ],
)
def test_a_top_level_tokenizer_without_a_model_makes_a_tokenizer_recipe(sections, cls):
    assert recipe_class({section: {} for section in sections}) is cls


def test_a_dumped_recipe_keeps_the_order_of_the_sections_and_keys():
    dumped = yaml.safe_load(dump_recipe(from_dict(RecipeConfig, base())))
    assert list(dumped) == [f.name for f in dataclasses.fields(RecipeConfig)]
    assert list(dumped["train"]) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(dumped["model"]["score"])[0] == "name"


def test_tokenizer_recipe_is_its_own_kind():
    cfg = load_recipe("tiny-ae")
    assert isinstance(cfg, TokenizerRecipeConfig) and cfg.tokenizer.options.channels_last


def test_an_override_given_twice_is_refused_naming_both():
    with pytest.raises(RecipeError, match=r"override 'train.lr' is given twice \('train.lr=1e-3' and 'train.lr=2e-3'\)"):
        load_recipe("tiny", ["train.lr=1e-3", "train.lr=2e-3"])


@pytest.mark.parametrize("overrides", [["model.score.name=gaussian", "model.score.sigma=0.5"],
                                       ["model.score.sigma=0.5", "model.score.name=gaussian"]])
def test_a_component_swapped_by_name_starts_from_its_defaults(overrides):
    cfg = load_recipe("tiny", overrides)  # tiny's energy score has alpha, noise_dim, ...: none carry over
    assert cfg.model.score.name == "gaussian" and cfg.model.score.options.sigma == 0.5
    assert cfg.model.score.options.width == 256  # the gaussian head's default, not tiny's energy width 32


def test_a_swap_by_name_comes_first_whatever_the_keys_spell():
    # `depth` sorts before `name`: an override applied in alphabetical order would be lost in the swap
    cfg = load_recipe("tiny", ["model.score.depth=3", "model.score.max_std=5.0", "model.score.name=gaussian"])
    assert cfg.model.score.name == "gaussian"
    assert cfg.model.score.options.depth == 3 and cfg.model.score.options.max_std == 5.0


def test_the_same_name_keeps_the_component_s_options():
    cfg = load_recipe("tiny", ["model.score.name=energy", "model.score.alpha=1.5"])
    assert cfg.model.score.options.width == 32 and cfg.model.score.options.alpha == 1.5
