"""``--resume`` continues a run exactly as it was: its own recipe, its logged points, a tokenizer's
normalisation folded once, and a checkpoint whose state file is damaged set aside."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import carl
from carl.training.checkpoints import choose_checkpoint, verify, write_manifest

AE = ["train.max_steps=30", "train.checkpoint_every=20", "train.lr_schedule=constant", "train.tracker=none"]


def test_a_tokenizer_resumed_after_its_final_checkpoint_is_not_normalised_twice(tmp_path):
    """30 steps, checkpoints at 20 and (after finish() folded the normalisation) at 30: resuming at
    30 must export the very same tokenizer, not fold the normalisation a second time."""
    out = carl.train("tiny-ae", AE, output=tmp_path / "ae", progress=False)
    before = load_file(out / "model.safetensors")
    state = json.loads((out / "checkpoints/step-0000030/trainer_state.json").read_text())
    assert state["finished"] is True and "held-out MSE" in state["job_figures"]
    carl.train("tiny-ae", AE, output=out, progress=False, resume=True)
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "held-out MSE" in (out / "README.md").read_text()  # the card keeps the figures of finish()


def test_extending_a_finished_tokenizer_run_normalises_at_the_new_end(tmp_path):
    out = carl.train("tiny-ae", AE, output=tmp_path / "ae", progress=False)
    carl.train("tiny-ae", [o for o in AE if "max_steps" not in o] + ["train.max_steps=45"], output=out, progress=False,
               resume=True)
    state = json.loads((out / "checkpoints/step-0000045/trainer_state.json").read_text())
    assert state["finished"] is True and state["step"] == 45  # finished again at the new end, after training on


def test_resume_continues_with_the_run_s_own_recipe(tmp_path, capsys):
    run = ["train.max_steps=4", "train.checkpoint_every=2", "train.base_lr=5.0e-3", "train.tracker=none"]
    out = carl.train("tiny", run, output=tmp_path, progress=False)
    carl.train("tiny", [], output=out, progress=False, resume=True)  # no overrides: the run's own recipe
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["train"]["max_steps"] == 4 and saved["train"]["base_lr"] == 5.0e-3  # not tiny's 60 and 8e-3
    assert "the recipe named differs in train.base_lr" in capsys.readouterr().out
    carl.train("tiny", ["train.max_steps=6"], output=out, progress=False, resume=True)  # extend it
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["train"]["base_lr"] == 5.0e-3
    assert (out / "checkpoints" / "step-0000006").is_dir()


def test_tensorboard_keeps_every_point_logged_before_the_resumed_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = ["train.checkpoint_every=3", "train.log_every=1"]
    carl.train("tiny", logged + ["train.max_steps=3"], output=tmp_path, progress=False)
    carl.train("tiny", logged + ["train.max_steps=6"], output=tmp_path, progress=False, resume=True)
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_a_trainer_state_missing_a_key_is_named_and_set_aside(tmp_path):
    out = carl.train("tiny", ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3",
                              "train.tracker=none"], output=tmp_path, progress=False)
    newest = out / "checkpoints" / "step-0000004"
    state = json.loads((newest / "trainer_state.json").read_text())
    del state["ema_updates"]
    (newest / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(newest, step=4, num_processes=1)  # hand-edited with a fresh manifest: the hashes agree
    assert verify(newest) == "trainer_state.json has no 'ema_updates'"
    said = []
    assert choose_checkpoint(out, say=said.append).name == "step-0000002"
    assert "trainer_state.json has no 'ema_updates'" in said[0] and (out / "checkpoints" / "step-0000004.damaged").is_dir()


@pytest.mark.parametrize("value", ["4", 4.5, None, True])
def test_a_trainer_state_key_of_the_wrong_type_is_named(tmp_path, value):
    folder = tmp_path / "step-0000004"
    folder.mkdir()
    state = {"step": 4, "ema_updates": 4, "num_processes": 1, "accelerator_step": 4, "skipped_nonfinite": 0}
    (folder / "trainer_state.json").write_text(json.dumps({**state, "step": value}))
    from carl.training.checkpoints import _trainer_state_fault

    assert _trainer_state_fault(folder / "trainer_state.json") == f"trainer_state.json: 'step' is {value!r}, not a whole number"
