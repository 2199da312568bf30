"""``generate()`` samples with the settings the model was trained and shipped with, as ``carl sample`` does."""

import pytest
import torch

import carl
from carl.config import SampleConfig
from carl.model import ContinuousAR


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return carl.train("tiny", ["train.max_steps=2", "train.tracker=none", "sample.num_steps=5", "sample.cfg=2.5",
                               "sample.temperature=0.6", "sample.cfg_schedule=constant"],
                      output=tmp_path_factory.mktemp("tiny"), progress=False)


def spy_sampler(model, monkeypatch):
    calls = []
    original = model.score.sample

    def sample(hidden, **kw):
        calls.append(kw)
        return original(hidden, **kw)

    monkeypatch.setattr(model.score, "sample", sample)
    return calls


def test_a_loaded_model_samples_with_its_recipe_s_settings(shipped, monkeypatch):
    model = ContinuousAR.from_pretrained(shipped)
    assert model.sample_config == SampleConfig(num_steps=5, cfg=2.5, temperature=0.6, cfg_schedule="constant",
                                               rows=4, per_row=4)
    calls = spy_sampler(model, monkeypatch)
    model.generate(torch.arange(2))
    assert {(kw["temperature"], kw["guidance"].scale) for kw in calls} == {(0.6, 2.5)}  # constant CFG 2.5
    calls.clear()
    model.generate(torch.arange(2), cfg=1.0, temperature=1.0)  # what the caller gives wins
    assert {(kw["temperature"], kw["guidance"]) for kw in calls} == {(1.0, None)}


def test_a_checkpoint_folder_samples_with_its_recipe_s_settings(shipped):
    step = next((shipped / "checkpoints").iterdir())
    assert ContinuousAR.from_pretrained(step).sample_config.cfg == 2.5


def test_a_model_saved_without_a_recipe_samples_with_carl_s_defaults(shipped, tmp_path):
    model = ContinuousAR.from_pretrained(shipped)
    model.save_pretrained(tmp_path / "bare")
    assert ContinuousAR.from_pretrained(tmp_path / "bare").sample_config == SampleConfig()
    assert ContinuousAR(model.config).sample_config == SampleConfig()


def test_the_hub_path_reads_the_recipe_too(shipped, tmp_path, monkeypatch):
    """A Hub repo id: the recipe is downloaded beside the weights (here from a local Hub cache)."""
    import shutil

    import huggingface_hub.constants as constants

    snapshot = tmp_path / "models--me--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(shipped, snapshot, ignore=shutil.ignore_patterns("checkpoints", "samples", "logs", ".carl"))
    (tmp_path / "models--me--tiny" / "refs").mkdir()
    (tmp_path / "models--me--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert ContinuousAR.from_pretrained("me/tiny").sample_config.temperature == 0.6
