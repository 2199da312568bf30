"""What carl will and will not touch in an output folder (the README's policy), one test per case:
a folder is carl's only when carl's own marker (.carl/run.json) says so."""

import json
import os
import socket

import pytest

import carl
from carl.errors import CarlError, FolderInUse
from carl.training import run_folder
from carl.training.run_folder import RunFolder

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
