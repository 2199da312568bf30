import inspect
from pathlib import Path

import pytest

from carl import hookspecs
from carl.hookspecs import hookimpl
from carl.plugins import load_plugins, plugin_infos, registry
from carl.conditioners import ClassConditioner
from carl.data import ToySequences
from carl.metrics import HeldOutLoss
from carl.scores import EnergyScore
from carl.tokenizers import PatchTokenizer
import warnings
import carl.plugins as plugins

RECIPES = Path(__file__).parent / "data" / "recipes"


class Throwaway:
    """A plugin object registered in a fixture, implementing every hook with a small component."""

    @staticmethod
    @hookimpl
    def register_tokenizers(register):
        register("patch2", PatchTokenizer)

    @staticmethod
    @hookimpl
    def register_scores(register):
        register("energy2", EnergyScore)

    @staticmethod
    @hookimpl
    def register_conditioners(register):
        register("class2", ClassConditioner)

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register("toy2", ToySequences)

    @staticmethod
    @hookimpl
    def register_metrics(register):
        register("loss2", HeldOutLoss)

    @staticmethod
    @hookimpl
    def register_recipes(register):
        register("throwaway", RECIPES)

    @staticmethod
    @hookimpl
    def register_commands(app):
        @app.command("hello")
        def hello() -> None:
            """Say hello from a plugin."""
            print("hello from throwaway")


@pytest.fixture
def fresh():
    yield
    load_plugins(force=True)


def test_builtins_register_through_the_hooks():
    pm = load_plugins()
    assert "carl.tokenizers" in {name for name, _ in pm.list_name_plugin()}
    assert registry("tokenizers").owner("patch") == "carl.tokenizers"
    assert {"causal", "random", "masked"} <= set(registry("orders").names())
    assert {i.name for i in plugin_infos()} >= {"carl.scores", "carl.orders"}


def test_registered_plugin_is_first_class(fresh, monkeypatch, tmp_path):
    import carl.plugins as plugins

    original = plugins._load_entry_points

    def with_throwaway(pm, infos):
        original(pm, infos)
        pm.register(Throwaway, name="throwaway")
        infos["throwaway"] = plugins.PluginInfo("throwaway", "0", "tests")

    monkeypatch.setattr(plugins, "_load_entry_points", with_throwaway)
    load_plugins(force=True)
    assert registry("tokenizers").get("patch2") is PatchTokenizer
    assert registry("tokenizers").owner("patch2") == "throwaway"
    info = {i.name: i for i in plugin_infos()}["throwaway"]
    assert info.provides["scores"] == ["energy2"] and info.provides["datasets"] == ["toy2"]
    assert info.provides["metrics"] == ["loss2"]
    # A recipe built only from the plugin's names trains like any other.
    from carl.config import load_recipe
    from carl.api import train

    cfg = load_recipe("throwaway-tiny", ["train.max_steps=3", "train.checkpoint_every=null", "eval.every_epochs=0.1",
                                         "eval.metric={name: loss2, num_items: 32}"])
    assert cfg.model.score.name == "energy2" and cfg.data.name == "toy2"
    out = train(cfg, output=tmp_path / "run", progress=False)
    assert (out / "model.safetensors").exists()
    # ... and its CLI command is there.
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("noop")(lambda: None)
    plugins.register_commands(app)
    result = CliRunner().invoke(app, ["hello"])
    assert result.exit_code == 0 and "hello from throwaway" in result.output


def test_a_plugin_reusing_a_name_fails_alone_and_names_both(fresh, monkeypatch):
    import carl.plugins as plugins

    class Clash:
        @staticmethod
        @hookimpl
        def register_orders(register):
            register("masked", object)

    def with_clash(pm, infos):
        pm.register(Clash, name="clash")
        infos["clash"] = plugins.PluginInfo("clash", "0", "tests")

    monkeypatch.setattr(plugins, "_load_entry_points", with_clash)
    with pytest.warns(UserWarning, match="carl plugin 'clash'"):
        load_plugins(force=True)
    info = {i.name: i for i in plugin_infos()}["clash"]
    assert info.error == "order 'masked' is registered twice: by plugin 'carl.orders' and by plugin 'clash'"
    assert registry("orders").owner("masked") == "carl.orders" and info.provides == {}  # the built-in keeps its name


def test_unknown_name_lists_available():
    with pytest.raises(KeyError, match="unknown scoring rule 'nope'; available: crps, diffusion, energy, flow, gaussian, gmm, kernel"):
        registry("scores").get("nope")


def test_broken_entry_point_is_reported_and_others_load(fresh, monkeypatch, tmp_path):
    import carl.plugins as plugins

    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class EP:
        name, value, dist = "broken", "broken_plugin", None

        def load(self):
            import importlib

            return importlib.import_module("broken_plugin")

    monkeypatch.setattr(plugins, "entry_points", lambda group: [EP()])
    monkeypatch.delenv("CARL_PLUGINS", raising=False)
    with pytest.warns(UserWarning, match="carl plugin 'broken'.*missing dependency xyz"):
        load_plugins(force=True)
    info = {i.name: i for i in plugin_infos()}["broken"]
    assert "missing dependency xyz" in info.error and "energy" in registry("scores").names()


def test_every_hookspec_is_exercised_by_a_test():
    specs = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]
    sources = "".join(p.read_text() for p in Path(__file__).parents[1].rglob("test_*.py"))
    missing = [name for name in specs if f"def {name}" not in sources]
    assert not missing, f"hookspecs without a test that implements them: {missing}"


PLUGIN_SOURCE = '''
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Dataset, Features

from carl.data import DataSource
from carl.hookspecs import hookimpl
from carl.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class WalkConfig:
    num_samples: int = 256
    length: int = 6


class RandomWalks(DataSource):
    Config = WalkConfig

    def __init__(self, config):
        self.config = config

    def dataset(self, split="train"):
        rng = np.random.default_rng(0)
        walks = rng.standard_normal((self.config.num_samples, self.config.length, 1)).cumsum(1).astype(np.float32)
        return Dataset.from_dict({"data": walks}, features=Features({"data": Array2D((self.config.length, 1), "float32")})).with_format("torch")


@dataclass(frozen=True)
class StepConfig:
    length: int = 6


class Increments(Tokenizer):
    """Each token is the step from the previous value (the first from 0)."""

    Config = StepConfig

    def __init__(self, config):
        super().__init__()
        self.config, self.num_tokens, self.token_dim = config, config.length, 1

    def encode(self, x):
        return torch.diff(x, dim=1, prepend=torch.zeros_like(x[:, :1]))

    def decode(self, tokens):
        return tokens.cumsum(1)


@hookimpl
def register_tokenizers(register):
    register("increments", Increments)


@hookimpl
def register_datasets(register):
    register("walks", RandomWalks)


@hookimpl
def register_recipes(register):
    register("walks", Path(__file__).parent / "recipes")
'''

RECIPE = """
model:
  tokenizer: {name: increments, length: 6}
  conditioner: {name: none}
  order: {name: causal}
  backbone: {width: 16, depth: 1, heads: 2}
  score: {name: energy, width: 16, depth: 1, noise_dim: 4}
data: {name: walks}
train: {global_batch: 32, max_steps: 4, tracker: none, sample_every: null, checkpoint_every: null}
sample: {num_steps: 6, rows: 2, per_row: 2}
"""


def test_a_separately_installed_distribution_is_discovered_and_trains(fresh, tmp_path, monkeypatch):
    """A plugin built as its own distribution (package + dist-info with an entry point) in a
    temporary folder on sys.path: carl finds it through importlib.metadata, with no change to carl."""
    root = tmp_path / "site"
    package = root / "carl_walks"
    (package / "recipes").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(PLUGIN_SOURCE)
    (package / "recipes" / "walks-tiny.yaml").write_text(RECIPE)
    info = root / "carl_walks-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: carl-walks\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[carl]\nwalks = carl_walks.plugin\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("CARL_PLUGINS", "walks")
    load_plugins(force=True)

    walks = {i.name: i for i in plugin_infos()}["walks"]
    assert (walks.version, walks.distribution, walks.error) == ("0.3.0", "carl-walks", None)
    assert walks.provides == {"tokenizers": ["increments"], "datasets": ["walks"], "recipes": ["walks"]}
    from typer.testing import CliRunner

    from carl.cli import app

    listing = CliRunner().invoke(app, ["plugins"])
    assert "walks 0.3.0" in listing.output and "tokenizers: increments" in listing.output
    from carl.config import load_recipe
    from carl.api import train

    out = train(load_recipe("walks-tiny"), output=tmp_path / "run", progress=False)
    import json

    assert json.loads((out / "carl.json").read_text())["plugins"] == {"walks": {"distribution": "carl-walks", "version": "0.3.0"}}


def test_a_failure_is_said_once_per_process(monkeypatch):
    monkeypatch.setattr(plugins._State, "warned", set())
    info = plugins.PluginInfo(name="broken", version="1", module="broken.plugin")
    again = plugins.PluginInfo(name="broken", version="1", module="broken.plugin")  # a reload's fresh record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins._fail(info, "ImportError: no")
        plugins._fail(again, "ImportError: no")
        plugins._fail(info, "a second reason")  # the first reason is kept
    assert [str(w.message) for w in caught] == [
        "carl plugin 'broken' (broken.plugin) failed to load: ImportError: no (see `carl plugins`)"]
    assert info.error == again.error == "ImportError: no"


def test_an_empty_carl_plugins_loads_the_built_ins_only(monkeypatch):
    from carl.plugins import load_plugins, plugin_infos, registry

    monkeypatch.setenv("CARL_PLUGINS", "")
    try:
        load_plugins(force=True)
        assert {i.name for i in plugin_infos()} == {"carl.tokenizers", "carl.orders", "carl.scores", "carl.conditioners",
                                                      "carl.data", "carl.metrics", "carl.recipes"}
        assert "kl16" not in registry("tokenizers") and "patch" in registry("tokenizers")
        monkeypatch.delenv("CARL_PLUGINS")  # unset: every installed plugin (the image plugin is, in this suite)
        load_plugins(force=True)
        assert "kl16" in registry("tokenizers")
    finally:
        monkeypatch.undo()
        load_plugins(force=True)
