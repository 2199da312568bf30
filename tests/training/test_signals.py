"""Runs stopped by a signal end cleanly (:mod:`carl.training.signals`): a checkpoint at the step
boundary, one line, exit codes 130 and 143, and a second signal stops at once."""

import json
import os
import signal
import subprocess
import sys

import pytest

from carl.api import train
from carl.config import load_recipe
from carl.errors import TrainingInterrupted
from carl.training.checkpoints import verify
from carl.training.signals import StopOnSignal
from carl.training.trainer import Trainer
from carl.errors import StoppedAtOnce


def test_sigint_checkpoints_at_the_step_boundary_and_the_folder_does_not_look_finished(tmp_path, monkeypatch):
    original = Trainer._before_step

    def send_at_step_3(self):  # the signal lands in the middle of step 4
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        original(self)

    monkeypatch.setattr(Trainer, "_before_step", send_at_step_3)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job a shell started in the background
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4; continue with --resume") as info:
        train(load_recipe("tiny", ["train.max_steps=50", "train.checkpoint_every=null"]), output=tmp_path, progress=False)
    assert info.value.exit_code == 130
    assert verify(tmp_path / "checkpoints" / "step-0000004") is None
    assert json.loads((tmp_path / ".carl" / "run.json").read_text())["status"] == "interrupted"
    assert "unfinished: step 4 of 50" in (tmp_path / "README.md").read_text()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigterm_from_outside_exits_143_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "carl", "train", "tiny", "train.max_steps=100000", "train.log_every=1",
         "train.checkpoint_every=null", "--output", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted at step ") and last.endswith("; continue with --resume")
    step = int(last.split("at step ")[1].split(";")[0])
    assert verify(out / "checkpoints" / f"step-{step:07d}") is None
    assert "Traceback" not in err


def test_a_second_identical_signal_stops_at_once():
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # another signal (a launcher passing it on) does not abort
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_second_signal_stops_with_its_own_exit_code(signum, code, capsys, monkeypatch):
    import carl.cli.program as program

    with StopOnSignal():
        os.kill(os.getpid(), signum)
        with pytest.raises(StoppedAtOnce) as stopped:
            os.kill(os.getpid(), signum)
    assert stopped.value.exit_code == code and isinstance(stopped.value, KeyboardInterrupt)

    def app(**kwargs):
        raise StoppedAtOnce(signum)

    monkeypatch.setattr(program, "app", app)
    monkeypatch.setattr("carl.plugins.register_commands", lambda app: None)
    with pytest.raises(SystemExit) as exit_:
        program.main(["train", "tiny"])
    assert exit_.value.code == code


def test_an_interrupt_after_an_older_checkpoint_writes_one_at_the_interrupted_step(tmp_path, monkeypatch):
    original = Trainer._before_step

    def send_at_step_5(self):  # after the checkpoint of step 3, in the middle of step 6
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        original(self)

    monkeypatch.setattr(Trainer, "_before_step", send_at_step_5)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 6") as info:
        train(load_recipe("tiny", ["train.max_steps=50", "train.checkpoint_every=3", "train.keep_checkpoints=5"]),
              output=tmp_path, progress=False)
    assert info.value.exit_code == 143
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    assert verify(tmp_path / "checkpoints" / "step-0000006") is None
