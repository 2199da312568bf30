"""Opening a model with its recipe (:mod:`carl.model.loading`): what a LoadedModel carries, training
checkpoints read strictly with their EMA weights, and failures that name the folder or the file."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import carl
from carl.errors import CarlError
from carl.model import ContinuousAR, load_model, open_model

from helpers import copy, message


def test_a_loaded_model_carries_its_recipe_folder_and_data(six_steps):
    loaded = open_model(six_steps)
    expected = carl.load_recipe("tiny", ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=3",
                                         f"output={six_steps}"])
    assert loaded.folder == six_steps and loaded.recipe == expected
    source = loaded.data_source()
    assert type(source) is type(loaded.recipe.data.build("datasets"))


def test_a_checkpoint_opens_with_its_recipe_and_exact_ema_weights(six_steps):
    step = six_steps / "checkpoints" / "step-0000004"
    loaded = open_model(step)
    assert loaded.folder == step and loaded.recipe == open_model(six_steps).recipe and not loaded.model.training
    ema = load_file(step / "ema.safetensors")
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in ema.items())


def test_a_checkpoint_missing_a_tensor_is_refused(six_steps, tmp_path):
    step = copy(six_steps / "checkpoints" / "step-0000004", tmp_path / "step")
    ema = load_file(step / "ema.safetensors")
    ema.pop("backbone.pos_embed")
    save_file(ema, step / "ema.safetensors")
    text = message(open_model, step)
    assert text.startswith(f"cannot read the EMA weights {step / 'ema.safetensors'}: RuntimeError: ")
    assert "backbone.pos_embed" in text


def test_a_folder_saved_without_a_recipe_opens_but_cannot_train_or_evaluate(six_steps, tmp_path):
    ContinuousAR.from_pretrained(six_steps).save_pretrained(tmp_path / "saved")
    loaded = open_model(tmp_path / "saved")
    assert loaded.recipe is None and loaded.data_source() is None and loaded.folder == tmp_path / "saved"
    assert message(load_model, tmp_path / "saved") == (
        f"{tmp_path / 'saved'} has no recipe.yaml (it was saved from Python without a recipe): "
        f"save it with model.save_pretrained(folder, recipe=...)")


def test_an_unexpected_failure_names_the_folder(six_steps, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ContinuousAR, "from_pretrained", fail)
    assert message(open_model, six_steps) == f"cannot load the model in {six_steps}: RuntimeError: boom"


def test_corrupt_weights_name_the_file(six_steps, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(six_steps, broken, ignore=shutil.ignore_patterns("checkpoints"))
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CarlError, match=f"cannot read the weights {broken / 'model.safetensors'}"):
        load_model(broken)


def test_missing_plugin_is_named(six_steps, tmp_path):
    import shutil

    folder = tmp_path / "needs"
    shutil.copytree(six_steps, folder, ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "carl.json").write_text(json.dumps({"carl": "0.1.0", "plugins": {"audio": {"distribution": "carl-audio", "version": "1.2"}}}))
    with pytest.raises(CarlError, match=r"needs the carl plugin 'audio' \(version 1.2\): pip install 'carl-audio>=1.2'"):
        load_model(folder)
