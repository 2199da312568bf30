"""A training run owns its output folder: foreign files, writability, the lock, the recorded folder."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from carl.config import load_recipe
from carl.errors import RecipeError
from carl.errors import CarlError
from carl.errors import FolderInUse
from carl.training.run_folder import RunFolder
from carl.api import train
from carl.training.trainer import Trainer

TINY = ["train.max_steps=2", "train.checkpoint_every=null"]


def test_refuses_a_folder_carl_did_not_create_and_overwrite_keeps_the_users_files(tmp_path):
    user = {"README.md": "my notes", "config.json": '{"mine": 1}', "model.safetensors": "my weights", "data.csv": "1,2"}
    for name, text in user.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(CarlError, match="not empty and was not created by carl .*README.md.*--overwrite"):
        train(load_recipe("tiny", TINY), output=tmp_path, progress=False)
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()} == user  # untouched

    train(load_recipe("tiny", TINY), output=tmp_path, progress=False, overwrite=True)
    for name in ("README.md", "config.json", "model.safetensors"):
        assert (tmp_path / f"{name}.orig").read_text() == user[name]  # moved aside, not replaced
        assert (tmp_path / name).read_bytes() != user[name].encode()  # carl's own file now
    assert (tmp_path / "data.csv").read_text() == "1,2"


def test_overwrite_starts_a_carl_run_again_and_resume_and_overwrite_exclude_each_other(tmp_path):
    cfg = load_recipe("tiny", ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=5"])
    train(cfg, output=tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CarlError, match="choose one"):
        train(cfg, output=tmp_path, progress=False, resume=True, overwrite=True)
    train(load_recipe("tiny", ["train.max_steps=3", "train.checkpoint_every=null"]), output=tmp_path, progress=False,
          overwrite=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003"]  # no step-2, step-4
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_an_unwritable_output_fails_before_the_first_step(tmp_path, monkeypatch):
    (tmp_path / "some_file").write_text("x")
    monkeypatch.setattr(Trainer, "train", lambda self: pytest.fail("training started"))
    with pytest.raises(CarlError, match=r"cannot create the output folder .*some_file/run: .*some_file is a file"):
        train(load_recipe("tiny", TINY), output=tmp_path / "some_file" / "run", progress=False)


def test_a_second_run_on_a_locked_folder_fails_and_a_dead_holders_lock_is_taken_over(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / ".carl" / "lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(FolderInUse, match=f"in use by another carl run \\(process {live.pid} "):
            train(load_recipe("tiny", TINY), output=tmp_path, progress=False)
        assert json.loads(lock.read_text())["pid"] == live.pid  # the other run's lock is left alone
    finally:
        live.kill()
        live.wait()
    messages = []
    folder = RunFolder.claim(tmp_path, say=messages.append)  # the holder is gone: a stale lock
    assert messages and f"lock of process {live.pid}, which is no longer running" in messages[0]
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(FolderInUse):
        RunFolder.claim(tmp_path)  # held by a live process (this one)
    folder.release()
    assert not lock.exists()


def test_the_recipe_and_hparams_record_the_output_folder_actually_used(tmp_path):
    cfg = load_recipe("tiny", TINY + ["train.tracker=tensorboard"])
    assert cfg.output == "runs/tiny"
    out = train(cfg, output=tmp_path / "real", progress=False)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["output"] == str(tmp_path / "real")
    events = list((out / "logs").rglob("events.out.tfevents.*"))  # the recipe and hparams go to TensorBoard
    assert len(events) == 1 and str(tmp_path / "real").encode() in events[0].read_bytes()
    assert json.loads((out / ".carl" / "run.json").read_text())["status"] == "finished"
    assert not (out / ".carl" / "lock").exists()


def test_keep_checkpoints_below_one_is_rejected(tmp_path):
    with pytest.raises(RecipeError, match=r"train.keep_checkpoints: -?\d+ is out of range; allowed: >= 1"):
        train(load_recipe("tiny", ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=-3"]),
              output=tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = load_recipe("tiny", ["train.max_steps=2"])
    train(cfg, output=tmp_path, progress=False)
    with pytest.raises(Exception, match="already holds checkpoints; pass --resume"):
        train(cfg, output=tmp_path, progress=False)
