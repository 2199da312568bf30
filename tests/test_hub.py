"""Model folders and the Hub: round trips, the exact uploaded folder, offline and corrupt files,
and models that need a plugin."""

import json

import pytest
import torch
from typer.testing import CliRunner

from carl.cli import app
from carl.config import load_recipe
from carl.api import push
from carl.layout import PUBLISHED
from carl.model import load_model
from carl.model import ContinuousAR
from carl.errors import CarlError
from carl.api import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_recipe("tiny", ["train.max_steps=6", "train.checkpoint_every=3", "train.log_every=3"])
    return train(cfg, output=out, progress=False)


def samples(model, seed=0):
    return model.generate(torch.arange(4) % 4, generator=torch.Generator().manual_seed(seed), return_tokens=True)


def test_folder_round_trip_keeps_weights_and_samples(trained, tmp_path):
    model, recipe = load_model(trained)
    model.save_pretrained(tmp_path / "copy")
    again = ContinuousAR.from_pretrained(tmp_path / "copy").eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    torch.testing.assert_close(samples(model), samples(again), rtol=0, atol=0)


def test_model_folder_has_card_and_requirements(trained):
    card = (trained / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: carl\ntags:") and "score-energy" in card and "order-causal" in card
    assert "| steps | 6 |" in card and ("![samples](samples.png)" in card) == (trained / "samples.png").exists()
    req = json.loads((trained / "carl.json").read_text())
    assert req["plugins"] == {} and "carl" in req  # built-ins only


def test_push_uploads_exactly_the_published_files(trained):
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            uploads.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            uploads.append(("upload", repo_id, files))
            return "https://huggingface.co/me/tiny/commit/1"

    push(trained, "me/tiny", private=True, api=FakeApi())
    (_, repo, private), (_, _, files) = uploads
    assert repo == "me/tiny" and private
    assert set(files) == {n for n in PUBLISHED if (trained / n).exists()} and "checkpoints" not in files
    assert files["model.safetensors"] == (trained / "model.safetensors").read_bytes()  # EMA by default
    push(trained, "me/tiny", raw=True, api=FakeApi())
    raw = uploads[-1][2]["model.safetensors"]
    assert raw == sorted((trained / "checkpoints").glob("step-*"))[-1].joinpath("model.safetensors").read_bytes()


def test_offline_uncached_repo_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["sample", "nobody/not-cached-anywhere"])
    assert result.exit_code != 0
    assert str(result.exception) == ("no such folder 'nobody/not-cached-anywhere', and it cannot be fetched from the Hub: "
                                     "it is not in the Hub cache, and HF_HUB_OFFLINE is set (unset it to download)")


def test_corrupt_weights_name_the_file(trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken, ignore=shutil.ignore_patterns("checkpoints"))
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CarlError, match=f"cannot read the weights {broken / 'model.safetensors'}"):
        load_model(broken)


def test_missing_plugin_is_named(trained, tmp_path):
    import shutil

    folder = tmp_path / "needs"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "carl.json").write_text(json.dumps({"carl": "0.1.0", "plugins": {"audio": {"distribution": "carl-audio", "version": "1.2"}}}))
    with pytest.raises(CarlError, match=r"needs the carl plugin 'audio' \(version 1.2\): pip install 'carl-audio>=1.2'"):
        load_model(folder)
