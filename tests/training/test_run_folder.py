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
import carl
from carl.training import run_folder

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


QUICK = ["train.max_steps=2", "train.checkpoint_every=null", "train.tracker=none"]


def look_alike(folder):
    """A folder that looks like a carl run (checkpoints/ and recipe.yaml) but is the user's."""
    files = {"checkpoints/my.pt": "my checkpoint", "recipe.yaml": "my: recipe", "README.md": "my notes",
             "model.safetensors": "my weights", "results.json": '{"mine": true}', "notes.txt": "keep me"}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def test_a_look_alike_is_refused_without_a_flag_and_nothing_changes(tmp_path):
    files = look_alike(tmp_path)
    with pytest.raises(CarlError, match="not empty and was not created by carl"):
        carl.train("tiny", QUICK, output=tmp_path, progress=False)
    assert all((tmp_path / name).read_text() == text for name, text in files.items())


def test_resume_into_a_look_alike_is_refused_and_nothing_changes(tmp_path):
    files = look_alike(tmp_path)
    with pytest.raises(CarlError, match="--resume: it holds no carl run"):
        carl.train("tiny", QUICK, output=tmp_path, progress=False, resume=True)
    assert all((tmp_path / name).read_text() == text for name, text in files.items())
    assert not (tmp_path / ".carl" / "run.json").exists()


def test_overwrite_on_a_look_alike_renames_what_carl_would_write_and_deletes_nothing(tmp_path):
    files = look_alike(tmp_path)
    carl.train("tiny", QUICK, output=tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "checkpoints.orig" / "my.pt").read_text() == "my checkpoint"
    for name in ("recipe.yaml", "README.md", "model.safetensors", "results.json"):
        assert (tmp_path / f"{name}.orig").read_text() == files[name]
    assert (tmp_path / "notes.txt").read_text() == "keep me"  # not a name carl writes: left where it is
    assert json.loads((tmp_path / ".carl" / "run.json").read_text())["status"] == "finished"


def test_overwrite_of_carl_s_own_run_clears_its_outputs_and_keeps_the_user_s(tmp_path):
    carl.train("tiny", ["train.max_steps=2", "train.checkpoint_every=1"], output=tmp_path, progress=False)
    assert (tmp_path / "logs").is_dir() and (tmp_path / "results.json").exists()
    (tmp_path / "notes.txt").write_text("keep me")
    stale = tmp_path / "logs" / "old-events"
    stale.write_text("the earlier run's")
    carl.train("tiny", QUICK, output=tmp_path, progress=False, overwrite=True)
    assert not stale.exists() and not (tmp_path / "checkpoints" / "step-0000001").exists()  # the earlier run's: cleared
    assert (tmp_path / "notes.txt").read_text() == "keep me" and not list(tmp_path.glob("*.orig"))


def test_resume_of_carl_s_own_run_keeps_the_user_s_files(tmp_path):
    carl.train("tiny", ["train.max_steps=2", "train.checkpoint_every=1"], output=tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "checkpoints" / "mine.txt").write_text("mine")
    carl.train("tiny", ["train.max_steps=4"], output=tmp_path, progress=False, resume=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me" and (tmp_path / "checkpoints" / "mine.txt").exists()


def dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def write_lock(folder, holder):
    (folder / ".carl").mkdir(parents=True, exist_ok=True)
    (folder / ".carl" / "lock").write_text(json.dumps(holder))


def test_a_stale_lock_is_taken_over_and_another_host_s_never(tmp_path):
    write_lock(tmp_path, {"pid": dead_pid(), "host": socket.gethostname(), "since": "then"})
    said = []
    folder = RunFolder.claim(tmp_path, say=said.append)
    assert json.loads(folder.lock_path.read_text())["pid"] == os.getpid() and "taking over the lock" in said[0]
    folder.release()
    write_lock(tmp_path, {"pid": dead_pid(), "host": "another-host", "since": "then"})
    with pytest.raises(FolderInUse, match="in use by another carl run .*another-host"):
        RunFolder.claim(tmp_path, resume=True)


def test_two_takers_of_a_stale_lock_cannot_both_win(tmp_path, monkeypatch):
    """B read the stale lock; before B moves it aside, A takes it over. B must not take A's lock."""
    write_lock(tmp_path, {"pid": dead_pid(), "host": socket.gethostname(), "since": "then"})
    a_lock = {"pid": os.getppid(), "host": socket.gethostname(), "since": "now"}  # a live process: A

    def a_wins_meanwhile(holder):
        write_lock(tmp_path, a_lock)  # A took the stale lock over between B's read and B's rename
        return True

    monkeypatch.setattr(run_folder, "lock_is_stale", a_wins_meanwhile)
    with pytest.raises(FolderInUse):
        RunFolder.claim(tmp_path)
    assert json.loads((tmp_path / ".carl" / "lock").read_text()) == a_lock  # A still holds it
    assert [p.name for p in (tmp_path / ".carl").iterdir()] == ["lock"]  # nothing left aside


def test_release_leaves_a_lock_someone_else_holds(tmp_path):
    folder = RunFolder.claim(tmp_path)
    other = {"pid": os.getppid(), "host": socket.gethostname(), "since": "now"}
    folder.lock_path.write_text(json.dumps(other))
    folder.release()
    assert json.loads(folder.lock_path.read_text()) == other


def test_each_refusal_tells_a_python_user_what_to_pass(tmp_path):
    """carl.train() takes overwrite= and resume=, not --flags: every refusal names both spellings."""
    look_alike(tmp_path / "yours")
    with pytest.raises(CarlError, match=r"--overwrite \(overwrite=True in Python\) to write into it"):
        RunFolder.claim(tmp_path / "yours")
    RunFolder.claim(tmp_path / "ours").release()  # carl's run, no checkpoint yet
    (tmp_path / "ours" / "samples.png").write_text("a grid")
    with pytest.raises(CarlError, match=r"earlier carl run .*\(or --resume; overwrite=True / resume=True in Python\)"):
        RunFolder.claim(tmp_path / "ours")
    (tmp_path / "ours" / "checkpoints" / "step-0000002").mkdir(parents=True)
    with pytest.raises(CarlError, match=r"already holds checkpoints; .*\(resume=True / overwrite=True in Python\)"):
        RunFolder.claim(tmp_path / "ours")
    with pytest.raises(CarlError, match=r"\(resume=True / overwrite=True in Python\): choose one"):
        RunFolder.claim(tmp_path / "ours", resume=True, overwrite=True)
