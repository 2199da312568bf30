"""``train.init_from``: fine-tuning starts from a trained model's weights, strictly, and never on resume."""

import pytest
import torch
from safetensors.torch import load_file

import carl
from carl.config import load_recipe
from carl.errors import WeightsError
from carl.training.trainer import Trainer

QUICK = ["train.max_steps=2", "train.checkpoint_every=null", "train.tracker=none", "train.log_every=1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return carl.train("tiny", QUICK, output=tmp_path_factory.mktemp("pretrained"), progress=False)


def weights_at_step_0(cfg, output) -> dict[str, torch.Tensor]:
    trainer = Trainer(cfg, output, progress=False)
    try:
        trainer.setup()
        return {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    finally:
        trainer.cleanup("failed")


def test_a_fine_tuning_run_starts_from_every_weight_of_the_model(pretrained, tmp_path):
    exported = load_file(pretrained / "model.safetensors")
    start = weights_at_step_0(load_recipe("tiny", QUICK + [f"train.init_from={pretrained}", "train.seed=7"]), tmp_path / "a")
    assert start.keys() == exported.keys() and all(torch.equal(start[k], exported[k]) for k in exported)
    fresh = weights_at_step_0(load_recipe("tiny", QUICK + ["train.seed=7"]), tmp_path / "b")
    assert not torch.equal(fresh["backbone.pos_embed"], exported["backbone.pos_embed"])  # it is not the default


def test_another_architecture_is_refused_naming_the_tensor(pretrained, tmp_path):
    cfg = load_recipe("tiny", QUICK + [f"train.init_from={pretrained}", "model.backbone.width=64"])
    with pytest.raises(WeightsError, match=r"train.init_from .*does not fit ContinuousAR: 32 shape: conditioner.fake_latent \(1, 32\) != \(1, 64\)"):
        weights_at_step_0(cfg, tmp_path / "c")


def test_a_missing_model_is_one_line(tmp_path):
    cfg = load_recipe("tiny", QUICK + [f"train.init_from={tmp_path / 'nothing'}"])
    with pytest.raises(carl.CarlError, match="no such folder"):
        weights_at_step_0(cfg, tmp_path / "d")


def test_resume_continues_from_the_checkpoint_not_from_init_from(pretrained, tmp_path):
    overrides = ["train.max_steps=2", "train.checkpoint_every=1", "train.tracker=none"]
    carl.train("tiny", overrides + ["train.seed=3"], output=tmp_path / "run", progress=False)
    checkpoint = load_file(tmp_path / "run/checkpoints/step-0000002/model.safetensors")
    cfg = load_recipe("tiny", ["train.max_steps=3", "train.checkpoint_every=1", "train.tracker=none", "train.seed=3",
                               f"train.init_from={pretrained}"])
    trainer = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    try:
        trainer.setup()
        state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        assert trainer.step == 2 and all(torch.equal(state[k], checkpoint[k]) for k in checkpoint)
    finally:
        trainer.cleanup("interrupted")
