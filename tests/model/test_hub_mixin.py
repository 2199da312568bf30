"""The Hub mixin of model folders (:mod:`carl.model.folder`): save_pretrained, push_to_hub and
from_pretrained pass every argument on to the Hub, refuse misspelt options and another model's
recipe, and check a Hub folder's plugins before its weights."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import carl
from carl.config import load_recipe
from carl.model import ContinuousAR


class RecordingApi:
    def __init__(self, token=None):
        self.token, self.calls = token, []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.calls.append(("upload_folder", repo_id, commit_message, sorted(p.name for p in Path(folder_path).iterdir())))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")


def test_save_pretrained_refuses_a_misspelt_push_option_even_without_pushing(model, tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument.*privat"):
        model.save_pretrained(tmp_path / "m", privat=True)
    assert not (tmp_path / "m").exists()   # refused before anything is written


def test_save_pretrained_refuses_another_models_recipe(model, tmp_path):
    other = load_recipe("tiny", ["model.backbone.width=64"])
    with pytest.raises(ValueError) as caught:
        model.save_pretrained(tmp_path / "x", recipe=other)
    assert str(caught.value) == ("save_pretrained: the recipe's model section is not this model's config; "
                                 "give the recipe the model was trained from, or none")


def test_push_to_hub_sends_the_recipe_figures_and_settings(four_steps, monkeypatch):
    import huggingface_hub

    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(RecordingApi(token)) or apis[-1])
    model, recipe = ContinuousAR.from_pretrained(four_steps), carl.open_model(four_steps).recipe
    url = model.push_to_hub("me/tiny", recipe=recipe, figures={"loss": 1.0})
    assert url == "https://huggingface.co/me/tiny/commit/1" and apis[0].token is None
    assert apis[0].calls == [("create_repo", "me/tiny", False), ("upload_folder", "me/tiny", "Upload carl model", [
        "README.md", "carl.json", "config.json", "model.safetensors", "recipe.yaml", "results.json"])]
    model.push_to_hub("me/tiny", private=True, token="hf_x", commit_message="v2")
    assert apis[1].token == "hf_x" and apis[1].calls[0][2] is True and apis[1].calls[1][2] == "v2"
    assert "recipe.yaml" not in apis[1].calls[1][3] and "results.json" not in apis[1].calls[1][3]


def test_save_pretrained_can_push_under_the_folders_name(four_steps, tmp_path, monkeypatch):
    import huggingface_hub

    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(RecordingApi(token)) or apis[-1])
    model, recipe = ContinuousAR.from_pretrained(four_steps), carl.open_model(four_steps).recipe
    url = model.save_pretrained(tmp_path / "tiny-v1", recipe=recipe, figures={"loss": 1.0}, push_to_hub=True,
                                private=True)
    assert url == "https://huggingface.co/tiny-v1/commit/1"
    assert {"recipe.yaml", "results.json"} <= {p.name for p in (tmp_path / "tiny-v1").iterdir()}
    assert apis[0].calls[0] == ("create_repo", "tiny-v1", True)
    assert {"recipe.yaml", "results.json"} <= set(apis[0].calls[1][3])  # the pushed copy has them too
    model.save_pretrained(tmp_path / "other", push_to_hub=True, repo_id="me/named")
    assert apis[1].calls[0] == ("create_repo", "me/named", False)


@pytest.fixture
def hub_downloads(four_steps, monkeypatch):
    """hf_hub_download served from ``four_steps`` (files it lacks are absent on the 'Hub'); the calls are recorded."""
    import huggingface_hub
    import huggingface_hub.hub_mixin
    from huggingface_hub.errors import EntryNotFoundError

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, {k: kwargs.get(k) for k in ("revision", "cache_dir", "token", "force_download",
                                                                    "local_files_only")}))
        if not (four_steps / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(four_steps / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)
    return calls


def test_from_pretrained_passes_every_hub_argument(four_steps, hub_downloads):
    model = ContinuousAR.from_pretrained("me/tiny", revision="v1", token="hf_x", cache_dir="/c", force_download=True,
                                         local_files_only=True)
    reference = ContinuousAR.from_pretrained(four_steps)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    files = [f for _, f, _ in hub_downloads]
    assert {"config.json", "carl.json", "model.safetensors"} <= set(files)
    expected = {"revision": "v1", "cache_dir": "/c", "token": "hf_x", "force_download": True, "local_files_only": True}
    assert all(repo == "me/tiny" and kw == expected for repo, _, kw in hub_downloads)
    hub_downloads.clear()
    ContinuousAR.from_pretrained("me/tiny")
    defaults = {"revision": None, "cache_dir": None, "token": None, "force_download": False, "local_files_only": False}
    assert all(kw == defaults for _, _, kw in hub_downloads)


def serve(monkeypatch, folder: Path) -> None:
    """hf_hub_download answered from ``folder``; a file it lacks is absent on the 'Hub'."""
    import huggingface_hub
    import huggingface_hub.hub_mixin
    from huggingface_hub.errors import EntryNotFoundError

    def download(repo_id, filename, **kwargs):
        if not (folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)


def test_from_pretrained_on_the_hub_without_carl_json_or_weights(four_steps, tmp_path, monkeypatch):
    folder = shutil.copytree(four_steps, tmp_path / "no-carl-json", ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "carl.json").unlink()
    serve(monkeypatch, folder)
    assert isinstance(ContinuousAR.from_pretrained("me/no-carl-json"), ContinuousAR)  # carl.json is optional
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"^me/no-carl-json has no model.safetensors$"):
        ContinuousAR.from_pretrained("me/no-carl-json")


def test_from_pretrained_on_the_hub_checks_the_plugins_first(four_steps, tmp_path, monkeypatch):

    folder = shutil.copytree(four_steps, tmp_path / "needs", ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "carl.json").write_text(json.dumps({"plugins": {"audio": {"distribution": "carl-audio", "version": "1"}}}))
    serve(monkeypatch, folder)
    with pytest.raises(carl.errors.CarlError, match=r"^this model needs the carl plugin 'audio'"):
        ContinuousAR.from_pretrained("me/needs")


