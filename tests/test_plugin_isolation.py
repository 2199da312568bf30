"""A broken plugin fails alone: an import error inside a hook, a raising hook, a misspelt hook or
a name already taken marks that plugin failed (with the reason) in `carl plugins`, and every
other command, `carl --help` included, keeps working."""

import sys
import textwrap

import pytest

import carl.plugins as plugins
from carl.plugins import load_plugins, plugin_infos, registry
from helpers import run_cli as run

PLUGINS = {
    "good": '''
        @hookimpl
        def register_tokenizers(register):
            from carl.tokenizers import PatchTokenizer
            register("goodtok", PatchTokenizer)

        @hookimpl
        def register_commands(app):
            @app.command("good-hello")
            def hello():
                """Say hello."""
                print("hello from good")
    ''',
    "lazyimport": '''
        @hookimpl
        def register_tokenizers(register):
            from not_installed_dependency import Tokenizer  # an import error inside the hook
            register("lazytok", Tokenizer)
    ''',
    "raising": '''
        @hookimpl
        def register_scores(register):
            from carl.scores import EnergyScore
            register("raisingscore", EnergyScore)  # registered before the raise: dropped too

        @hookimpl
        def register_datasets(register):
            raise RuntimeError("the dataset server is down")
    ''',
    "badcommand": '''
        @hookimpl
        def register_commands(app):
            @app.command("half")
            def half():
                """Added before the hook raised."""

            raise KeyError("commands half-registered")
    ''',
    "takencommand": '''
        @hookimpl
        def register_commands(app):
            @app.command("train")
            def train():
                """Shadows carl train."""
    ''',
    "misspelt": '''
        @hookimpl
        def register_tokenizer(register):  # not a carl hook
            pass
    ''',
    "clash": '''
        @hookimpl
        def register_orders(register):
            register("masked", object)
    ''',
}


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plugins above, each installed as a distribution (dist-info with an entry point) in a temp folder."""
    for name, source in PLUGINS.items():
        package = tmp_path / f"carl_iso_{name}"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "plugin.py").write_text("from carl.hookspecs import hookimpl\n" + textwrap.dedent(source))
        info = tmp_path / f"carl_iso_{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: carl-iso-{name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[carl]\n{name} = carl_iso_{name}.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CARL_PLUGINS", ",".join(PLUGINS))
    monkeypatch.setattr(plugins._State, "warned", set())  # each test is a fresh process as far as warnings go
    with pytest.warns(UserWarning, match="failed to load"):
        load_plugins(force=True)
    yield
    for module in [m for m in sys.modules if m.startswith("carl_iso_")]:
        del sys.modules[module]
    monkeypatch.undo()
    load_plugins(force=True)


def test_each_broken_plugin_fails_alone_with_its_reason(installed):
    errors = {i.name: i.error for i in plugin_infos() if i.name in PLUGINS}
    assert errors["good"] is None
    assert errors["lazyimport"] == "register_tokenizers raised ModuleNotFoundError: No module named 'not_installed_dependency'"
    assert errors["raising"] == "register_datasets raised RuntimeError: the dataset server is down"
    assert errors["misspelt"].startswith("PluginValidationError: unknown hook 'register_tokenizer'")
    assert errors["clash"] == "order 'masked' is registered twice: by plugin 'carl.orders' and by plugin 'clash'"
    assert "goodtok" in registry("tokenizers") and "lazytok" not in registry("tokenizers")
    assert "raisingscore" not in registry("scores") and registry("orders").owner("masked") == "carl.orders"


def test_every_command_keeps_working(installed, capsys):
    code, out, err = run(["--help"], capsys)
    assert code == 0 and "good-hello" in out and "half" not in out and "Traceback" not in err
    errors = {i.name: i.error for i in plugin_infos() if i.name in PLUGINS}
    assert errors["badcommand"] == "register_commands: KeyError: 'commands half-registered'"
    assert errors["takencommand"] == "register_commands: CarlError: the command 'carl train' exists already"
    code, out, _ = run(["plugins"], capsys)
    assert code == 0 and "good 1.0 (carl_iso_good.plugin)\n    tokenizers: goodtok" in out
    assert "lazyimport 1.0 (carl_iso_lazyimport.plugin)  FAILED TO LOAD: register_tokenizers raised ModuleNotFoundError" in out
    assert "badcommand 1.0 (carl_iso_badcommand.plugin)  FAILED TO LOAD: register_commands: KeyError" in out
    assert run(["good-hello"], capsys)[:2] == (0, "hello from good\n")
    code, out, _ = run(["recipes", "list"], capsys)
    assert code == 0 and out.startswith("tiny")
    code, out, err = run(["train", "tiny", "--help"], capsys)  # carl's own train, not the plugin's
    assert code == 0 and "Train a model from RECIPE" in out
