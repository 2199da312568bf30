import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from carl.cli import app
from carl.config import load_recipe
from carl.model import load_model
from carl.model import ContinuousAR
from carl.api import train
from carl.training.checkpoints import latest_checkpoint
from carl.training.jobs.ar import train_temperature
from carl.training.schedule import lr_factor, plan_batching

runner = CliRunner()


def mean_loss(model, data, seed=0):
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        chunks = [{k: v[i * 64 : (i + 1) * 64] for k, v in data.items()} for i in range(4)]
        return sum(model.loss(chunk).item() for chunk in chunks) / 4


def test_cli_trains_reloads_and_samples_reproducibly(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "tiny", "train.max_steps=40", "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").exists() and (out / "config.json").exists() and (out / "recipe.yaml").exists()

    model, recipe = load_model(out)
    data = recipe.data.build("datasets").dataset()[:256]
    torch.manual_seed(recipe.train.seed)
    untrained = ContinuousAR(recipe.model)
    assert mean_loss(model, data) < 0.8 * mean_loss(untrained, data)

    # Same seed, same tokens: the reloaded folder against the weights in memory.
    in_memory = ContinuousAR(recipe.model)
    in_memory.load_state_dict(load_file(out / "model.safetensors"))
    labels = torch.tensor([0, 1, 2, 3])
    a = model.generate(labels, return_tokens=True, generator=torch.Generator().manual_seed(7))
    b = in_memory.eval().generate(labels, return_tokens=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    result = runner.invoke(app, ["sample", str(out), "--labels", "0,2", "--num", "3", "--out", str(tmp_path / "s.pt")])
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "s.pt").shape == (6, 8, 2)  # the samples as a tensor file
    result = runner.invoke(app, ["sample", str(out), "--labels", "0,2", "--num", "3", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size == (3 * 124, 2 * 124)  # toy sequences are drawn: 2 rows of 3 tiles


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


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = load_recipe("tiny", ["train.max_steps=2"])
    train(cfg, output=tmp_path, progress=False)
    with pytest.raises(Exception, match="already holds checkpoints; pass --resume"):
        train(cfg, output=tmp_path, progress=False)


def test_schedules_and_batching():
    assert [lr_factor(s, warmup=4, total=10, schedule="constant", min_ratio=0) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    assert lr_factor(10, warmup=0, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert train_temperature(((0, 1.0), (750, 0.99)), 749.9) == 1.0
    assert train_temperature(((0, 1.0), (750, 0.99)), 750) == 0.99
    cfg = load_recipe("tiny", ["train.global_batch=2048", "train.micro_batch=64"]).train
    assert plan_batching(cfg, 8).accumulation == 4 and plan_batching(cfg, 8).micro_batch == 64
    with pytest.raises(Exception, match="not a multiple"):
        plan_batching(load_recipe("tiny", ["train.global_batch=100", "train.micro_batch=64"]).train, 1)


def test_cli_errors_are_one_line():
    proc = subprocess.run(
        [sys.executable, "-c", "from carl.cli import main; main()", "train", "tiny", "train.lrr=1"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown recipe key 'train.lrr'")
    assert "Traceback" not in proc.stderr


def test_evaluation_every_half_epoch_is_logged(tmp_path):
    from carl.config import load_recipe
    from carl.api import train

    cfg = load_recipe("tiny", ["train.max_steps=16", "data.num_samples=256", "eval.every_epochs=0.5",
                               "eval.metric={name: loss, num_items: 64}", "train.checkpoint_every=null"])
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(cfg, output=tmp_path, progress=False)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("eval at step")]
    assert [line.split(":")[0] for line in lines] == [f"eval at step {s} (epoch {s / 8:.2f})" for s in (4, 8, 12, 16)]
    assert all("loss_train" in line for line in lines)
