"""Runs that end early end cleanly: signals (checkpoint, message, exit code) and non-finite losses."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import carl.cli.program as cli_program
from carl.training.checkpoints import verify
from carl.config import load_recipe
from carl.model import ContinuousAR
from carl.errors import NonFiniteError
from carl.errors import TrainingInterrupted
from carl.training.signals import StopOnSignal
from carl.api import train
from carl.training.trainer import Trainer


def poison_losses(monkeypatch, bad_calls):
    """Make the training loss NaN on the given forward calls (1-based)."""
    original, calls = ContinuousAR.forward, {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        loss = original(self, batch)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    monkeypatch.setattr(ContinuousAR, "forward", forward)


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


def test_the_command_line_passes_on_an_exit_code_typer_returns(monkeypatch):
    monkeypatch.setattr(cli_program, "app", lambda **kwargs: 130)  # what typer returns on Ctrl-C
    monkeypatch.setattr("carl.plugins.register_commands", lambda app: None)
    with pytest.raises(SystemExit) as info:
        cli_program.main()
    assert info.value.code == 130


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint_and_model(tmp_path, monkeypatch):
    poison_losses(monkeypatch, bad_calls=range(6, 100))  # NaN from step 6 on
    cfg = load_recipe("tiny", ["train.max_steps=12", "train.checkpoint_every=4", "train.log_every=4"])
    with pytest.raises(NonFiniteError, match=r"NaN or infinite in 3 of steps 5-8; .*checkpoints/step-0000004"):
        train(cfg, output=tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000004"]
    assert verify(tmp_path / "checkpoints" / "step-0000004") is None
    exported, ema = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "checkpoints/step-0000004/ema.safetensors")
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert json.loads((tmp_path / ".carl" / "run.json").read_text())["status"] == "failed"


def test_skip_nonfinite_skips_a_bounded_number_of_bad_steps(tmp_path, monkeypatch):
    poison_losses(monkeypatch, bad_calls={3, 5})
    overrides = ["train.max_steps=6", "train.checkpoint_every=null", "train.grad_clip=null"]
    out = train(load_recipe("tiny", overrides + ["train.skip_nonfinite=2"]), output=tmp_path / "two", progress=False)
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())
    poison_losses(monkeypatch, bad_calls={3, 5})  # a fresh count for the second run
    with pytest.raises(NonFiniteError, match="2 steps with a non-finite loss or gradient by step 5, more than "
                                             "train.skip_nonfinite=1 allows"):
        train(load_recipe("tiny", overrides + ["train.skip_nonfinite=1"]), output=tmp_path / "one", progress=False)
