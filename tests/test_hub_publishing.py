"""Writing and pushing model folders (carl.hub): the plugins a model needs (carl.json), the files
beside the weights, and exactly what a push sends to the Hub."""

import json
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest

import carl
from carl.api import push
from carl.model.folder import check_requirements, missing_plugins, requirements, write_model_folder_extras
from carl.model import ContinuousAR
from carl.errors import CarlError
from carl.plugins import PluginInfo
from carl.testing import only_plugins

SERIES = {"timeseries": {"distribution": "carl-timeseries", "version": carl.__version__}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with two checkpoints."""
    out = tmp_path_factory.mktemp("run")
    return carl.train("tiny", {"train.max_steps": 4, "train.checkpoint_every": 2}, output=out, progress=False)


class RecordingApi:
    """HfApi's two calls a push makes, recorded; the commit info has a ``commit_url`` as the Hub's does."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, commit_message):
        names = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, commit_message, names))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


# ---------------------------------------------------------------------------------------------
# carl.json: the plugins a model needs


def test_requirements_name_the_plugins_of_a_recipe_and_of_a_model_config():
    with only_plugins("timeseries"):
        recipe = carl.load_recipe("ts-macro-energy")
        assert requirements(recipe) == {"carl": carl.__version__, "plugins": SERIES}  # tokenizer and data
        assert requirements(recipe.model) == {"carl": carl.__version__, "plugins": SERIES}
    assert requirements(carl.load_recipe("tiny")) == {"carl": carl.__version__, "plugins": {}}  # built-ins only


def test_requirements_fall_back_to_the_plugin_name_without_a_distribution(monkeypatch):
    with only_plugins("timeseries"):
        recipe = carl.load_recipe("ts-macro-energy")
        infos = [PluginInfo("timeseries", "0.3", "carl_timeseries.plugin")]  # e.g. a plugin registered in code
        monkeypatch.setattr("carl.model.folder.plugin_infos", lambda: infos)
        assert requirements(recipe.model)["plugins"] == {"timeseries": {"distribution": "timeseries", "version": "0.3"}}


def test_missing_plugins_installed_absent_or_broken(monkeypatch):
    needs = {"carl": "0.1.0", "plugins": {"audio": {"distribution": "carl-audio", "version": "1.2"}}}
    installed = [PluginInfo("audio", "1.2", "carl_audio.plugin", distribution="carl-audio")]
    monkeypatch.setattr("carl.model.folder.plugin_infos", lambda: installed)
    assert missing_plugins(needs) is None
    assert missing_plugins({"carl": "0.1.0"}) is None  # a carl.json without plugins
    installed[0].error = "ImportError: no module named 'soundfile'"
    assert missing_plugins(needs) == ("this model needs the carl plugin 'audio', which is installed but failed to load: "
                                      "ImportError: no module named 'soundfile'")
    installed.clear()
    assert missing_plugins(needs) == "this model needs the carl plugin 'audio' (version 1.2): pip install 'carl-audio>=1.2'"


def test_check_requirements_reads_carl_json(tmp_path):
    check_requirements(tmp_path)  # no carl.json: nothing to check
    (tmp_path / "carl.json").write_text(json.dumps({"carl": "0.1.0", "plugins": {}}))
    check_requirements(tmp_path)
    (tmp_path / "carl.json").write_text(json.dumps({"plugins": {"audio": {"distribution": "carl-audio", "version": "1"}}}))
    with pytest.raises(CarlError, match=r"^this model needs the carl plugin 'audio' \(version 1\): pip install"):
        check_requirements(tmp_path)


# ---------------------------------------------------------------------------------------------
# the files beside the weights


def test_extras_are_readable_json_and_a_card_for_the_location(trained, tmp_path):
    ContinuousAR.from_pretrained(trained).save_pretrained(tmp_path)
    figures = {"loss": 0.25, "date": date(2026, 12, 5)}  # a value JSON cannot hold is written as text
    write_model_folder_extras(tmp_path, figures=figures, location="me/tiny")
    assert (tmp_path / "carl.json").read_text() == json.dumps({"carl": carl.__version__, "plugins": {}}, indent=2)
    assert (tmp_path / "results.json").read_text() == '{\n  "loss": 0.25,\n  "date": "2026-12-05"\n}'
    assert "ContinuousAR.from_pretrained('me/tiny')" in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "recipe.yaml").exists()


# ---------------------------------------------------------------------------------------------
# pushing


def test_push_creates_a_public_repo_and_returns_the_commit_url(trained):
    api = RecordingApi()
    assert push(trained, "me/tiny", api=api) == "https://huggingface.co/me/tiny/commit/abc"
    published = ["README.md", "carl.json", "config.json", "model.safetensors", "recipe.yaml", "results.json", "samples.png"]
    assert api.calls == [("create_repo", "me/tiny", False, True),
                         ("upload_folder", "me/tiny", "Upload carl model", [n for n in published if (trained / n).exists()])]
    push(trained, "me/tiny", private=True, api=api, commit_message="Step 4")
    assert api.calls[2][2] is True and api.calls[3][2] == "Step 4"


def test_push_refuses_a_bad_repo_id_before_any_call(trained):
    api = RecordingApi()
    with pytest.raises(CarlError, match=r"^'me/not ok' is not a Hub repo id \(user/name\): "):
        push(trained, "me/not ok", api=api)
    assert api.calls == []


def test_a_raw_push_needs_a_checkpoint(trained, tmp_path):
    ContinuousAR.from_pretrained(trained).save_pretrained(tmp_path / "saved")
    api = RecordingApi()
    with pytest.raises(CarlError, match=f"^{tmp_path / 'saved'} has no checkpoints/step-N with raw weights$"):
        push(tmp_path / "saved", "me/tiny", raw=True, api=api)
    assert api.calls == []
