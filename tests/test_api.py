"""The Python API (:mod:`carl.api`): ``carl.train`` takes a recipe name, a path or a config;
``carl.push`` publishes exactly a model folder's published files; the public surface is
documented."""

from pathlib import Path
from types import SimpleNamespace

import pytest

import carl
from carl.api import push
from carl.errors import CarlError
from carl.layout import PUBLISHED
from carl.model import ContinuousAR


def test_python_train_takes_a_name_a_path_or_a_config(tmp_path):
    from carl.api import resolve
    from carl.config import RecipeConfig, load_recipe, resolve_recipe_path

    by_name = resolve("tiny", ["train.max_steps=3", "sample.cfg=2.0"])
    assert isinstance(by_name, RecipeConfig) and (by_name.train.max_steps, by_name.sample.cfg) == (3, 2.0)
    assert resolve(resolve_recipe_path("tiny"), {"train.max_steps": 3, "sample.cfg": 2.0}) == by_name
    assert resolve(load_recipe("tiny"), ["train.max_steps=3", "sample.cfg=2.0"]) == by_name
    with pytest.raises(CarlError, match="unknown recipe key 'train.lrr'"):
        resolve("tiny", {"train.lrr": 1})
    from carl import train  # the same callable whichever way it is imported

    assert train is carl.train and callable(train)


def test_public_api_is_documented():
    assert ContinuousAR.__doc__.startswith("A continuous autoregressive model: tokenizer + conditioner")
    for method in (ContinuousAR.__init__, ContinuousAR.from_pretrained, ContinuousAR.save_pretrained,
                   ContinuousAR.push_to_hub, ContinuousAR.generate, carl.train.__call__):
        assert method.__doc__ and "Initialize internal Module state" not in method.__doc__, method
    from carl.api import train

    assert "Args:" in train.__doc__ and "Returns:" in ContinuousAR.from_pretrained.__doc__


# ---------------------------------------------------------------------------------------------
# carl.push


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


def test_push_creates_a_public_repo_and_returns_the_commit_url(four_steps):
    api = RecordingApi()
    assert push(four_steps, "me/tiny", api=api) == "https://huggingface.co/me/tiny/commit/abc"
    published = ["README.md", "carl.json", "config.json", "model.safetensors", "recipe.yaml", "results.json", "samples.png"]
    assert api.calls == [("create_repo", "me/tiny", False, True),
                         ("upload_folder", "me/tiny", "Upload carl model", [n for n in published if (four_steps / n).exists()])]
    push(four_steps, "me/tiny", private=True, api=api, commit_message="Step 4")
    assert api.calls[2][2] is True and api.calls[3][2] == "Step 4"


def test_push_refuses_a_bad_repo_id_before_any_call(four_steps):
    api = RecordingApi()
    with pytest.raises(CarlError, match=r"^'me/not ok' is not a Hub repo id \(user/name\): "):
        push(four_steps, "me/not ok", api=api)
    assert api.calls == []


def test_push_uploads_exactly_the_published_files(six_steps):
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            uploads.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            uploads.append(("upload", repo_id, files))
            return "https://huggingface.co/me/tiny/commit/1"

    push(six_steps, "me/tiny", private=True, api=FakeApi())
    (_, repo, private), (_, _, files) = uploads
    assert repo == "me/tiny" and private
    assert set(files) == {n for n in PUBLISHED if (six_steps / n).exists()} and "checkpoints" not in files
    assert files["model.safetensors"] == (six_steps / "model.safetensors").read_bytes()  # EMA by default
    push(six_steps, "me/tiny", raw=True, api=FakeApi())
    raw = uploads[-1][2]["model.safetensors"]
    assert raw == sorted((six_steps / "checkpoints").glob("step-*"))[-1].joinpath("model.safetensors").read_bytes()


def test_a_raw_push_needs_a_checkpoint(four_steps, tmp_path):
    ContinuousAR.from_pretrained(four_steps).save_pretrained(tmp_path / "saved")
    api = RecordingApi()
    with pytest.raises(CarlError, match=f"^{tmp_path / 'saved'} has no checkpoints/step-N with raw weights$"):
        push(tmp_path / "saved", "me/tiny", raw=True, api=api)
    assert api.calls == []
