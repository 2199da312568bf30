"""Self-verifying, pickle-free checkpoints (:mod:`carl.training.checkpoints`): manifest, fallback,
exact resume, pruning."""

import json

import pytest
import torch
from safetensors.torch import load_file

from carl.api import train
from carl.config import load_recipe
from carl.errors import CheckpointError
from carl.model import ContinuousAR
from carl.training.checkpoints import choose_checkpoint, latest_checkpoint, prune, verify, write_manifest
from carl.training.state_files import save_tree

from helpers.pickles import Payload


# dropout, accumulation, a cosine schedule with warm-up: every piece of state matters
EXACT = ["train.checkpoint_every=3", "train.lr_schedule=cosine", "train.warmup_epochs=0.5", "model.backbone.dropout=0.1",
         "train.global_batch=16", "train.micro_batch=8", "train.keep_checkpoints=3"]


def plant_pickles(folder, marker):
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin", "pytorch_model.bin"):
        torch.save(Payload(marker), folder / name)


class Crash(Exception):
    """Stands for anything that kills a run between two checkpoints."""


@pytest.mark.parametrize("warmup", [0, 0.5])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, warmup):
    # 64 items in batches of 16 (two micro-batches of 8, dropout on): 4 steps per epoch, 12 in all.
    overrides = ["train.max_steps=12", "train.checkpoint_every=5", "train.lr_schedule=cosine", f"train.warmup_epochs={warmup}",
                 "model.backbone.dropout=0.1", "train.global_batch=16", "train.micro_batch=8", "data.num_samples=64"]
    cfg = load_recipe("tiny", overrides)
    full = train(cfg, output=tmp_path / "full", progress=False)

    # The very same run, killed in the middle of its 8th step (latest checkpoint: step 5, in the
    # second epoch), then resumed: steps 6 to 8 are replayed, across the end of that epoch.
    forward, calls = ContinuousAR.forward, []

    def crash_in_step_8(self, batch):
        calls.append(1)
        if len(calls) == 7 * 2 + 2:  # the second micro-batch of step 8
            raise Crash
        return forward(self, batch)

    monkeypatch.setattr(ContinuousAR, "forward", crash_in_step_8)
    with pytest.raises(Crash):
        train(cfg, output=tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000005"
    resumed = train(cfg, output=tmp_path / "cut", resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(full / "checkpoints" / "step-0000012" / name)
        b = load_file(resumed / "checkpoints" / "step-0000012" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}:{key}")


def test_resume_skips_a_damaged_checkpoint_never_unpickles_and_ends_exactly_like_an_uninterrupted_run(tmp_path, capsys):
    full = train(load_recipe("tiny", EXACT + ["train.max_steps=9"]), output=tmp_path / "full", progress=False)
    cut = train(load_recipe("tiny", EXACT + ["train.max_steps=6"]), output=tmp_path / "cut", progress=False)
    step3, step6 = cut / "checkpoints" / "step-0000003", cut / "checkpoints" / "step-0000006"
    marker = tmp_path / "payload-ran"
    for folder in (step3, step6):
        plant_pickles(folder, marker)
    ema = step6 / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:-100])  # truncated: a crash, a full disk

    capsys.readouterr()
    resumed = train(load_recipe("tiny", EXACT + ["train.max_steps=9"]), output=cut, resume=True, progress=False)
    said = capsys.readouterr().out
    assert "step-0000006 is damaged: ema.safetensors has" in said and "resuming from step-0000003" in said
    assert not marker.exists(), "a pickle planted in the run folder was unpickled on --resume"
    assert (cut / "checkpoints" / "step-0000006.damaged" / "ema.safetensors").exists()  # set aside, not deleted
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(full / "checkpoints" / "step-0000009" / name)
        b = load_file(resumed / "checkpoints" / "step-0000009" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}:{key}")


def test_verify_names_the_bad_file(tmp_path):
    folder = tmp_path / "checkpoints" / "step-0000004"
    folder.mkdir(parents=True)
    names = ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "scheduler.safetensors", "rng-0.safetensors"]
    for name in names:
        save_tree(folder / name, {"x": torch.arange(4.0)})
    (folder / "trainer_state.json").write_text(json.dumps({"step": 4, "ema_updates": 4, "num_processes": 1, "accelerator_step": 0,
                                                        "skipped_nonfinite": 0}))
    assert verify(folder) == "no manifest.json (not completely written, or written by an older carl)"
    write_manifest(folder, step=4, num_processes=1)
    assert verify(folder) is None

    data = bytearray((folder / "optimizer.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    (folder / "optimizer.safetensors").write_bytes(bytes(data))
    assert verify(folder) == "optimizer.safetensors does not match its SHA-256 in the manifest"
    (folder / "optimizer.safetensors").unlink()
    assert verify(folder) == "optimizer.safetensors is missing"
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*\(step-0000004: optimizer.safetensors is missing\)"):
        choose_checkpoint(tmp_path)
    assert choose_checkpoint(tmp_path / "elsewhere") is None  # no checkpoints at all: start from scratch


def test_pruning_keeps_the_newest(tmp_path):
    folders = [tmp_path / "checkpoints" / f"step-{s:07d}" for s in (2, 4, 6)]
    for folder in folders:
        folder.mkdir(parents=True)
    assert prune(tmp_path, 1, folders[-1]) == folders[:2]
    assert [p.exists() for p in folders] == [False, False, True]
    with pytest.raises(Exception, match="keep_checkpoints: must be at least 1"):
        prune(tmp_path, 0, folders[-1])
    assert folders[-1].exists()


def test_pruning_with_keep_2_over_four_checkpoints_keeps_the_two_newest(tmp_path):
    folders = [tmp_path / "checkpoints" / f"step-{s:07d}" for s in (3, 6, 9, 12)]
    for folder in folders:
        folder.mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000015.tmp").mkdir()  # an unfinished write is no checkpoint
    assert prune(tmp_path, 2, folders[-1]) == folders[:2]
    assert [p.exists() for p in folders] == [False, False, True, True]
    assert (tmp_path / "checkpoints" / "step-0000015.tmp").exists()


def two_process_checkpoint(folder):
    """A checkpoint written by 2 processes: every file, rank 1's RNG state included."""
    folder.mkdir(parents=True)
    for name in ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "scheduler.safetensors",
                 "rng-0.safetensors", "rng-1.safetensors"]:
        save_tree(folder / name, {"x": torch.arange(4.0)})
    (folder / "trainer_state.json").write_text(json.dumps({"step": 4, "ema_updates": 4, "num_processes": 2,
                                                           "accelerator_step": 0, "skipped_nonfinite": 0}))
    write_manifest(folder, step=4, num_processes=2)


def test_a_two_process_checkpoint_needs_rank_1_s_random_state(tmp_path):
    folder = tmp_path / "checkpoints" / "step-0000004"
    two_process_checkpoint(folder)
    assert verify(folder) is None
    (folder / "rng-1.safetensors").unlink()
    assert verify(folder) == "rng-1.safetensors is missing"
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["rng-1.safetensors"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify(folder) == "manifest.json does not list rng-1.safetensors"


def test_resuming_with_another_process_count_is_refused_naming_both(tmp_path):
    from carl.training.checkpoints import load_training_state

    folder = tmp_path / "checkpoints" / "step-0000004"
    two_process_checkpoint(folder)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\); resume it with the same number, not 1"):
        load_training_state(folder, model=None, ema=None, optimizer=None, scheduler=None, scaler=None, num_processes=1, rank=0)
