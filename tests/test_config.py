import pytest

from carl.config import RecipeConfig, RecipeError, apply_overrides, dump_recipe, from_dict, load_recipe, to_dict
from carl.plugins import recipe_files
from carl.scores import EnergyScoreConfig, MixtureScoreConfig


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
