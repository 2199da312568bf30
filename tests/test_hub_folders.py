"""Finding and opening model folders (carl.hub): what each wrong folder is told, Hub revisions
reaching the download, training checkpoints read strictly, and what a LoadedModel carries."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import carl
import carl.model.folder as folder_format
import carl.remote as remote
from carl.errors import RecipeError
from carl.model import load_model, open_model
from carl.model.folder import is_checkpoint, local_folder, read_config
from carl.remote import resolve_folder
from carl.model import ContinuousAR
from carl.errors import CarlError


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with three checkpoints (steps 2, 4 and 6)."""
    out = tmp_path_factory.mktemp("run")
    return carl.train("tiny", {"train.max_steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 3},
                     output=out, progress=False)


def copy(trained: Path, into: Path, *, checkpoints: bool = False) -> Path:
    shutil.copytree(trained, into, ignore=None if checkpoints else shutil.ignore_patterns("checkpoints"))
    return into


def message(call, *args) -> str:
    with pytest.raises(CarlError) as caught:
        call(*args)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# wrong folders


def test_a_file_is_not_a_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    assert message(resolve_folder, file) == f"{file} is a file; give a model folder, a checkpoint folder or a Hub repo id"
    assert message(local_folder, file) == f"{file} is a file, not a model folder"
    assert message(local_folder, tmp_path / "absent") == f"no such folder: {tmp_path / 'absent'}"


def test_a_run_folder_without_its_config_points_to_its_latest_checkpoint(trained, tmp_path):
    run = copy(trained, tmp_path / "run", checkpoints=True)
    assert len(list((run / "checkpoints").glob("step-*"))) == 3
    (run / "config.json").unlink()
    expected = (f"{run} is not a model folder (no config.json) but holds training checkpoints: "
                f"give one of them, e.g. {run / 'checkpoints' / 'step-0000006'}")
    assert message(local_folder, run) == expected
    assert message(open_model, run) == expected
    assert message(local_folder, tmp_path) == f"{tmp_path} is not a carl model folder (no config.json)"


def test_what_counts_as_a_training_checkpoint(trained, tmp_path):
    step = trained / "checkpoints" / "step-0000004"
    assert is_checkpoint(step) and not is_checkpoint(trained)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy2(step / "ema.safetensors", partial)  # EMA weights without the recipe
    assert not is_checkpoint(partial)
    shutil.copy2(step / "recipe.yaml", partial)
    assert is_checkpoint(partial)
    (partial / "config.json").write_text("{}")  # a model folder that also keeps EMA weights
    assert not is_checkpoint(partial)
    assert message(local_folder, step).startswith(f"{step} is a training checkpoint, not a model folder; ")


def test_a_corrupt_config_is_named_not_blamed_on_the_weights(trained, tmp_path):
    folder = copy(trained, tmp_path / "broken")
    (folder / "config.json").write_text("{not json")
    expected = f"cannot read {folder / 'config.json'}: JSONDecodeError: "
    assert message(open_model, folder).startswith(expected)
    assert message(ContinuousAR.from_pretrained, folder).startswith(expected)
    with pytest.raises(RecipeError, match=r"unknown recipe key 'config\.typo'"):
        (folder / "config.json").write_text(json.dumps({**read_config(trained), "typo": 1}))
        folder_format.write_model_folder_extras(folder)


def test_an_unexpected_failure_names_the_folder(trained, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ContinuousAR, "from_pretrained", fail)
    assert message(open_model, trained) == f"cannot load the model in {trained}: RuntimeError: boom"


def test_a_folder_saved_without_a_recipe_opens_but_cannot_train_or_evaluate(trained, tmp_path):
    ContinuousAR.from_pretrained(trained).save_pretrained(tmp_path / "saved")
    loaded = open_model(tmp_path / "saved")
    assert loaded.recipe is None and loaded.data_source() is None and loaded.folder == tmp_path / "saved"
    assert message(load_model, tmp_path / "saved") == (
        f"{tmp_path / 'saved'} has no recipe.yaml (it was saved from Python without a recipe): "
        f"save it with model.save_pretrained(folder, recipe=...)")


# ---------------------------------------------------------------------------------------------
# what is opened


def test_a_loaded_model_carries_its_recipe_folder_and_data(trained):
    loaded = open_model(trained)
    expected = carl.load_recipe("tiny", ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=3",
                                         f"output={trained}"])
    assert loaded.folder == trained and loaded.recipe == expected
    source = loaded.data_source()
    assert type(source) is type(loaded.recipe.data.build("datasets"))


def test_a_checkpoint_opens_with_its_recipe_and_exact_ema_weights(trained):
    step = trained / "checkpoints" / "step-0000004"
    loaded = open_model(step)
    assert loaded.folder == step and loaded.recipe == open_model(trained).recipe and not loaded.model.training
    ema = load_file(step / "ema.safetensors")
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in ema.items())


def test_a_checkpoint_missing_a_tensor_is_refused(trained, tmp_path):
    step = copy(trained / "checkpoints" / "step-0000004", tmp_path / "step")
    ema = load_file(step / "ema.safetensors")
    ema.pop("backbone.pos_embed")
    save_file(ema, step / "ema.safetensors")
    text = message(open_model, step)
    assert text.startswith(f"cannot read the EMA weights {step / 'ema.safetensors'}: RuntimeError: ")
    assert "backbone.pos_embed" in text


def test_a_revision_reaches_the_hub_download(trained, monkeypatch):
    calls = []

    def snapshot_download(repo_id, revision=None):
        calls.append((repo_id, revision))
        return str(trained)

    monkeypatch.setattr(remote, "snapshot_download", snapshot_download)
    assert resolve_folder("me/tiny", "v1") == trained
    assert open_model("me/tiny", "v2").folder == trained
    model, recipe = load_model("me/tiny", "v3")
    assert recipe == open_model(trained).recipe and isinstance(model, ContinuousAR)
    assert calls == [("me/tiny", "v1"), ("me/tiny", "v2"), ("me/tiny", "v3")]
