"""Loading a model folder is strict: a tensor missing from ``model.safetensors`` or one too many
fails with one line naming the file and the keys (the Hub mixin's default leaves a missing
tensor at its random initialisation and ignores extra ones)."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from carl.cli import app

from carl.config import load_recipe
from carl.model import load_model
from carl.model.folder import write_model_folder_extras
from carl.model import ContinuousAR
from carl.errors import WeightsError


@pytest.fixture
def folder(tmp_path):
    cfg = load_recipe("tiny")
    torch.manual_seed(0)
    ContinuousAR(cfg.model).save_pretrained(tmp_path)
    write_model_folder_extras(tmp_path, cfg)
    return tmp_path


def rewrite(folder, change):
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")


def test_a_complete_folder_loads_exactly(folder):
    model = ContinuousAR.from_pretrained(folder)
    for key, value in load_file(folder / "model.safetensors").items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_missing_tensor_fails_naming_file_and_key(folder):
    rewrite(folder, lambda state: state.pop("backbone.blocks.1.attn.qkv.weight"))
    with pytest.raises(WeightsError, match=r"model\.safetensors does not fit ContinuousAR: 1 missing: backbone\.blocks\.1\.attn\.qkv\.weight$"):
        ContinuousAR.from_pretrained(folder)
    with pytest.raises(WeightsError, match="1 missing"):
        load_model(folder)


def test_an_extra_tensor_fails_naming_it(folder):
    rewrite(folder, lambda state: state.update({"score.net.extra": torch.zeros(3)}))
    with pytest.raises(WeightsError, match=r"model\.safetensors does not fit ContinuousAR: 1 unexpected: score\.net\.extra$"):
        ContinuousAR.from_pretrained(folder)


def test_carl_sample_refuses_in_one_line(folder, tmp_path_factory):
    rewrite(folder, lambda state: state.pop("conditioner.fake_latent"))
    out = tmp_path_factory.mktemp("grid") / "grid.pt"
    result = CliRunner().invoke(app, ["sample", str(folder), "--out", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert isinstance(result.exception, WeightsError)  # `carl` prints CarlErrors as one line, no traceback
    message = str(result.exception)
    assert "\n" not in message and str(folder / "model.safetensors") in message and "conditioner.fake_latent" in message


def test_pickled_weights_are_not_read(folder):
    with pytest.raises(WeightsError, match="model.safetensors only"):
        ContinuousAR._load_as_pickle(ContinuousAR(load_recipe("tiny").model), str(folder / "pytorch_model.bin"), "cpu", False)
