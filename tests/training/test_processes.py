"""Several processes on CPU: `accelerate launch --cpu` really runs them, a launch without a process
group is refused, and 2 processes train what 1 process with 2 accumulation steps trains."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from carl.config import load_recipe
from carl.errors import CarlError
from carl.training.processes import check_process_group, requested_cpu_processes
from carl.api import train

# No random draws in the loss: causal order, Gaussian log score, no label drop, no dropout.
DETERMINISTIC = ["model.score={name: gaussian, depth: 2, width: 32}", "model.conditioner.label_drop=0",
                 "train.global_batch=16", "train.micro_batch=8", "train.max_steps=5", "train.checkpoint_every=null"]


def free_port() -> int:
    """A port no one listens on now (a fixed one may be held, or in TIME_WAIT, from an earlier launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_like_one_process_with_accumulation(tmp_path):
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "carl", "train", "tiny", *DETERMINISTIC, "--output", str(two), "--no-progress"],
        capture_output=True, text=True, timeout=500, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and "= 8 x 2 x 1 accumulation" in proc.stdout
    assert proc.stdout.count("model folder:") == 1

    one = train(load_recipe("tiny", DETERMINISTIC), output=tmp_path / "one", progress=False)  # 8 x 1 x 2
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(two / "checkpoints" / "step-0000005" / name)
        b = load_file(one / "checkpoints" / "step-0000005" / name)
        assert a.keys() == b.keys()
        for key in a:  # float noise only: the attention key bias, whose gradient is zero in exact arithmetic,
            # takes Adam steps of its rounding noise (seen: 5e-6); a batching mistake moves every weight by ~lr (5e-4)
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-5, msg=f"{name}:{key}")


def test_processes_without_a_process_group_are_refused(tmp_path, monkeypatch):
    with pytest.raises(CarlError, match="2 processes were launched but accelerate joined 1 .*ACCELERATE_USE_CPU=1"):
        check_process_group(1, {"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    check_process_group(2, {"WORLD_SIZE": "2"})
    check_process_group(1, {})
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun on a machine without GPUs, without ACCELERATE_USE_CPU
    with pytest.raises(CarlError, match="2 processes were launched but accelerate joined 1"):
        train(load_recipe("tiny", ["train.max_steps=2"]), output=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_the_processes_accelerate_launch_cpu_asked_for():
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "ACCELERATE_USE_CPU": "True"}
    launcher = ["/usr/bin/python3", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "3", "-m", "carl", "train"]
    assert requested_cpu_processes(env, launcher) == 3
    assert requested_cpu_processes(env, [sys.executable, "-m", "accelerate.commands.launch", "--num_processes=2", "x.py"]) == 2
    assert requested_cpu_processes({**env, "WORLD_SIZE": "3", "RANK": "0"}, launcher) == 0  # a worker it started
    assert requested_cpu_processes({**env, "ACCELERATE_USE_CPU": "False"}, launcher) == 0
    assert requested_cpu_processes(env, ["bash"]) == 0  # not started by accelerate
    assert requested_cpu_processes(env, launcher[:3] + ["--cpu", "--num_processes", "1"]) == 0
