"""The training loop (:mod:`carl.training.trainer`): a run lowers the loss and its folder reloads
and samples reproducibly; the setup line, the loader and the optimizer; evaluation along the way;
where a run resumes."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import carl
from carl.cli import app
from carl.config import load_recipe
from carl.model import ContinuousAR, load_model
from carl.training import accel
from carl.training.trainer import Trainer, _finite_mean


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


def test_the_setup_line_names_the_job_parameters_processes_batch_lr_and_steps(tmp_path, capsys):
    trainer = Trainer(load_recipe("tiny", ["train.max_steps=4"]), output=tmp_path, progress=False)
    trainer.setup()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.cleanup()
    assert (f"carl: ar job, {trainable / 1e6:.2f}M trainable parameters | 1 process(es) on cpu (no mixed precision) | "
            f"global batch 32 = 32 x 1 x 1 accumulation | lr 1.00e-03 | 16 steps/epoch, 4 steps | output {tmp_path}") in capsys.readouterr().out


# bf16 first: the second case is also the regression test of one process training in two precisions
# (accelerate's per-process state refused the second until cleanup() reset it)
@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_reaches_the_accelerator(tmp_path, monkeypatch, capsys, native, expected):
    monkeypatch.setattr(accel, "native_bf16", lambda: native)
    trainer = Trainer(load_recipe("tiny", ["train.max_steps=1", "train.mixed_precision=auto"]), output=tmp_path, progress=False)
    trainer.setup()
    precision = trainer.accelerator.mixed_precision
    trainer.cleanup()
    assert precision == expected and f"on cpu ({expected} mixed precision)" in capsys.readouterr().out


def test_the_loader_shuffles_drops_the_ragged_batch_and_the_optimizer_takes_the_recipe_s_betas(tmp_path):
    cfg = load_recipe("tiny", ["train.max_steps=4", "train.betas=[0.8,0.9]"])
    trainer = Trainer(cfg, output=tmp_path, progress=False)
    trainer.setup()
    try:
        assert isinstance(trainer.loader.batch_sampler.sampler, torch.utils.data.RandomSampler)
        assert trainer.loader.batch_sampler.drop_last
        assert all(group["betas"] == (0.8, 0.9) for group in trainer.optimizer.param_groups)
    finally:
        trainer.cleanup()


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


def test_finite_mean_skips_non_finite_losses():
    assert _finite_mean(torch.tensor([4.0, float("inf")])).item() == 4.0
    assert _finite_mean(torch.tensor([1.0, float("nan"), 3.0])).item() == 2.0
    assert _finite_mean(torch.tensor([float("nan")])).item() == 0.0


def test_the_run_log_says_where_it_resumed_or_that_it_starts_afresh(tmp_path, capsys):
    cfg = load_recipe("tiny", ["train.max_steps=2", "train.checkpoint_every=2"])
    carl.train(cfg, output=tmp_path / "fresh", progress=False, resume=True)
    assert f"carl: no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}; starting from scratch" in capsys.readouterr().out
    state = json.loads((tmp_path / "fresh" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["ema_updates"] == 2  # started from step 0: two steps trained
    carl.train(load_recipe("tiny", ["train.max_steps=4", "train.checkpoint_every=2"]), output=tmp_path / "fresh",
               progress=False, resume=True)
    assert f"carl: resumed from {tmp_path / 'fresh' / 'checkpoints' / 'step-0000002'} at step 2" in capsys.readouterr().out


def test_a_run_within_its_warm_up_warns(tmp_path, capsys):
    carl.train("tiny", ["train.max_steps=4", "train.warmup_steps=10", "train.tracker=none"], output=tmp_path / "a",
               progress=False)
    out = capsys.readouterr().out
    assert ("carl: warning: the learning-rate warm-up (10 steps: train.warmup_epochs 0, train.warmup_steps 10) takes "
            "4 of the run's 4 steps, so the rate never reaches its peak") in out
    carl.train("tiny", ["train.max_steps=40", "train.warmup_steps=10", "train.tracker=none"], output=tmp_path / "b",
               progress=False)
    assert "warm-up" not in capsys.readouterr().out
    carl.train("tiny", ["train.max_steps=4", "train.warmup_steps=2", "train.tracker=none"], output=tmp_path / "c",
               progress=False)  # half the run: it warns, and the rate does reach its peak
    out = capsys.readouterr().out
    assert "warm-up (2 steps: train.warmup_epochs 0, train.warmup_steps 2) takes 2 of the run's 4 steps" in out
    assert "never reaches its peak" not in out


def test_the_job_sees_the_epoch_fraction_before_each_step(tmp_path, monkeypatch):
    """The job's per-step hook (the AR job's train temperature schedule) gets step / steps per epoch."""
    from carl.api import train
    from carl.training.jobs.ar import ARJob

    seen = []
    monkeypatch.setattr(ARJob, "before_step", lambda self, module, epoch: seen.append(epoch))
    cfg = load_recipe("tiny", ["train.max_steps=12", "data.num_samples=256", "train.checkpoint_every=null"])
    train(cfg, output=tmp_path, progress=False)
    steps_per_epoch = 256 // cfg.train.global_batch
    assert seen == [step / steps_per_epoch for step in range(12)]
