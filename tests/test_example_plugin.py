"""docs/plugins.md runs: its code is the example package docs/example_plugin/ (checked to be
identical), which is installed here as its own distribution, then trained, sampled, evaluated and
its command run, through carl's command line."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from carl import cli
from carl.errors import CarlError
from carl.plugins import load_plugins
from carl.testing import options_without_help
from helpers import run_cli

DOCS = Path(__file__).parents[1] / "docs"
EXAMPLE = DOCS / "example_plugin"
BLOCK = re.compile(r'```\w+ title="(?P<path>[^"]+)"\n(?P<code>.*?)```\n', re.DOTALL)


def test_the_docs_show_every_file_of_the_example_exactly():
    shown = {m["path"]: m["code"] for m in BLOCK.finditer((DOCS / "plugins.md").read_text())}
    files = {str(p.relative_to(EXAMPLE)) for p in EXAMPLE.rglob("*") if p.is_file() and p.suffix in (".py", ".toml", ".yaml")}
    assert set(shown) == files - {"carl_waves/__init__.py"}
    for path, code in shown.items():
        assert code == (EXAMPLE / path).read_text(), f"docs/plugins.md and docs/example_plugin/{path} differ"


def run(argv, capsys):
    code, out, err = run_cli(argv, capsys)
    return code, out + err


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """docs/example_plugin installed with pip into a temporary site folder (a copy is built, so
    the repository gets no build files), loaded through its entry point like any plugin."""
    shutil.copytree(EXAMPLE, tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(tmp_path / "site"), str(tmp_path / "src")]
    result = subprocess.run(pip, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("CARL_PLUGINS", "waves")
    load_plugins(force=True)
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("carl_waves")]:
        del sys.modules[module]
    monkeypatch.undo()
    load_plugins(force=True)


def test_the_example_plugin_installs_trains_samples_and_runs_its_command(installed, capsys, monkeypatch):
    code, out = run(["plugins"], capsys)
    assert code == 0 and "waves 0.1.0 (carl_waves.plugin)\n" in out
    for line in ("datasets: sines", "metrics: frequency", "recipes: waves", "tokenizers: waves"):
        assert f"    {line}\n" in out

    folder = installed / "run"
    code, out = run(["train", "waves-tiny", "train.max_steps=6", "eval.every_epochs=0.25", "eval.metric.per_class=2",
                     "--output", str(folder), "--no-progress"], capsys)
    assert code == 0, out
    assert re.search(r"eval at step 4 \(epoch 0.25\): frequency_accuracy [\d.]+", out)  # the plugin's metric
    assert Image.open(folder / "samples.png").size == (4 * (32 + 4), 4 * (24 + 4))  # render: (B, 24, 32, 3)
    needs = {"waves": {"distribution": "carl-waves", "version": "0.1.0"}}
    assert json.loads((folder / "carl.json").read_text())["plugins"] == needs
    assert "pip install 'carl>=0.1.0' 'carl-waves>=0.1.0'" in (folder / "README.md").read_text()

    grid = installed / "out" / "waves.png"
    code, out = run(["sample", str(folder), "--labels", "0,3", "--num", "2", "--out", str(grid)], capsys)
    assert code == 0 and Image.open(grid).size == (2 * 36, 2 * 28), out
    code, out = run(["waves-check", str(folder), "--per-class", "2"], capsys)
    assert code == 0 and re.fullmatch(r"frequency accuracy: [\d.]+\n", out), out
    assert options_without_help(cli.app) == []

    monkeypatch.setenv("CARL_PLUGINS", "")  # the plugin is gone: loading names what to install
    load_plugins(force=True)
    from carl.model import ContinuousAR

    with pytest.raises(CarlError, match=re.escape("needs the carl plugin 'waves' (version 0.1.0): pip install 'carl-waves>=0.1.0'")):
        ContinuousAR.from_pretrained(folder)
