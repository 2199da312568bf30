"""What a training run writes, figure by figure: the logged windows, results.json, each
checkpoint's trainer state, recipe and manifest, and the sample grids' steps."""

import json
from types import SimpleNamespace

import pytest

import carl
from carl.config import dump_recipe, load_recipe
from carl.training.logs import TrainingLog
import torch

from carl.training.schedule import learning_rate, lr_factor
from carl.training.trainer import Trainer, _finite_mean

OVERRIDES = ["train.max_steps=8", "train.checkpoint_every=4", "train.log_every=4", "train.sample_every=3",
             "train.lr_schedule=cosine", "train.warmup_epochs=0.125"]  # tiny: 16 steps per epoch, warm-up 2 steps


def spy(monkeypatch, owner, name, record):
    """Wrap ``owner.name`` so every call's positional arguments and result reach ``record``."""
    original = getattr(owner, name)

    def wrapper(self, *args):
        result = original(self, *args)
        record(args, result)
        return result
    monkeypatch.setattr(owner, name, wrapper)


@pytest.fixture  # per test, not per module: mutmut credits a shared fixture's calls to the first test only
def run(tmp_path, monkeypatch):
    """One tiny run of 8 steps (2 s) with its logged windows, per-step losses, logged images and
    figures recorded, on a clock that advances 2 s per reading (so the throughput is known exactly)."""
    out = tmp_path / "run"
    windows, losses, images, figures = [], [], [], []
    readings = iter(range(0, 10_000, 2))
    monkeypatch.setattr("carl.training.trainer.time", SimpleNamespace(perf_counter=lambda: float(next(readings))))
    spy(monkeypatch, TrainingLog, "step", lambda args, _: windows.append(args[0]))
    spy(monkeypatch, Trainer, "_log", lambda args, _: losses.append(args[0].clone()))
    spy(monkeypatch, TrainingLog, "image", lambda args, _: images.append(args))
    spy(monkeypatch, Trainer, "_figures", lambda _, result: figures.append(result))
    cfg = load_recipe("tiny", OVERRIDES + [f"output={out}"])
    carl.train(cfg, output=out, progress=False)
    return SimpleNamespace(out=out, cfg=cfg, windows=windows, losses=losses, images=images, figures=figures)


def test_logged_windows_report_step_epoch_lr_and_throughput(run):
    cfg, windows, losses = run.cfg, run.windows, run.losses
    assert [(w.step, w.total, w.epoch) for w in windows] == [(4, 8, 0.25), (8, 8, 0.5)]
    assert [w.loss for w in windows] == [loss.item() for loss in losses]  # the window's mean, as reduced
    assert [w.samples_per_s for w in windows] == [64.0, 64.0]  # 4 steps of 32 samples in 2 s, each window
    for w in windows:
        assert w.grad_norm is not None and w.grad_norm > 0
        assert w.lr == pytest.approx(learning_rate(cfg.train) * lr_factor(w.step, warmup=2, total=8, schedule="cosine",
                                                               min_ratio=cfg.train.min_lr / learning_rate(cfg.train)))


def test_results_json_holds_the_run_s_figures(run):
    out, windows = run.out, run.windows
    figures = json.loads((out / "results.json").read_text())
    assert figures == {"steps": 8, "epochs": "0.50", "global batch": 32, "learning rate": "1.00e-03",
                       "training loss (last logged)": f"{windows[-1].loss:.4f}"}  # finished: no status
    assert run.figures[0]["status"] == "unfinished: step 4 of 8 (continue with `carl train ... --resume`)"
    assert run.figures[0]["training loss (last logged)"] == f"{windows[0].loss:.4f}"  # the step-4 checkpoint's card


def test_each_checkpoint_holds_its_state_recipe_and_manifest(run):
    out, cfg = run.out, run.cfg
    for step in (4, 8):
        folder = out / "checkpoints" / f"step-{step:07d}"
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state == {"step": step, "ema_updates": step, "epoch": step / 16, "num_processes": 1,
                         "accelerator_step": step, "skipped_nonfinite": 0, "finished": False, "job_figures": {}}
        assert (folder / "recipe.yaml").read_text() == dump_recipe(cfg)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["step"] == step and manifest["num_processes"] == 1
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_sample_grids_at_every_sample_every_steps_and_at_the_end(run):
    out = run.out
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-0000003.png", "step-0000006.png",
                                                                    "step-0000008.png"]
    assert (out / "samples.png").read_bytes() == (out / "samples" / "step-0000008.png").read_bytes()
    assert run.images == [("samples", out / "samples" / f"step-{step:07d}.png", step) for step in (3, 6, 8)]


def test_the_run_log_says_where_it_resumed_or_that_it_starts_afresh(tmp_path, capsys):
    cfg = load_recipe("tiny", ["train.max_steps=2", "train.checkpoint_every=2"])
    carl.train(cfg, output=tmp_path / "fresh", progress=False, resume=True)
    assert f"carl: no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}; starting from scratch" in capsys.readouterr().out
    state = json.loads((tmp_path / "fresh" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["ema_updates"] == 2  # started from step 0: two steps trained
    carl.train(load_recipe("tiny", ["train.max_steps=4", "train.checkpoint_every=2"]), output=tmp_path / "fresh",
               progress=False, resume=True)
    assert f"carl: resumed from {tmp_path / 'fresh' / 'checkpoints' / 'step-0000002'} at step 2" in capsys.readouterr().out


def test_lr_schedule_reaches_the_scheduler(tmp_path):
    """The scheduler follows the recipe's schedule: constant keeps the peak, cosine decays to min_lr."""
    rates = {}
    for schedule in ("constant", "cosine"):
        cfg = load_recipe("tiny", ["train.max_steps=4", "train.checkpoint_every=null", f"train.lr_schedule={schedule}",
                                   "train.warmup_epochs=0", "train.min_lr=0.0"])
        trainer = Trainer(cfg, output=tmp_path / schedule, progress=False)
        trainer.setup()
        rates[schedule] = [trainer.scheduler.lr_lambdas[0](step) for step in range(5)]
        trainer.cleanup()
    assert rates["constant"] == [1.0] * 5
    assert rates["cosine"][0] == 1.0 and rates["cosine"][4] == pytest.approx(0.0) and rates["cosine"][2] == pytest.approx(0.5)


def test_the_setup_line_names_the_job_parameters_processes_batch_lr_and_steps(tmp_path, capsys):
    trainer = Trainer(load_recipe("tiny", ["train.max_steps=4"]), output=tmp_path, progress=False)
    trainer.setup()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.cleanup()
    assert (f"carl: ar job, {trainable / 1e6:.2f}M trainable parameters | 1 process(es) on cpu | global batch 32 = 32 x 1 "
            f"x 1 accumulation | lr 1.00e-03 | 16 steps/epoch, 4 steps | output {tmp_path}") in capsys.readouterr().out


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


def test_the_cosine_schedule_ends_at_min_lr(tmp_path):
    """min_lr is absolute; the scheduler's factor is its fraction of the peak."""
    cfg = load_recipe("tiny", ["train.max_steps=4", "train.warmup_epochs=0", "train.lr_schedule=cosine",
                               "train.min_lr=2e-4"])
    trainer = Trainer(cfg, output=tmp_path, progress=False)
    trainer.setup()
    assert trainer.scheduler.lr_lambdas[0](4) == pytest.approx(2e-4 / learning_rate(cfg.train))
    trainer.cleanup()


def test_nonfinite_weights_before_any_checkpoint_are_refused_and_say_so(tmp_path):
    trainer = Trainer(load_recipe("tiny", ["train.max_steps=4"]), output=tmp_path, progress=False)
    trainer.setup()
    try:
        with torch.no_grad():
            next(trainer.ema.module.parameters()).fill_(float("nan"))
        with pytest.raises(Exception, match=r"the ema weights are NaN or infinite at step 0; stopped without writing "
                                            r"them \(no checkpoint was written yet\)"):
            trainer.save_checkpoint()
        assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
    finally:
        trainer.cleanup()


def test_finite_mean_skips_non_finite_losses():
    assert _finite_mean(torch.tensor([4.0, float("inf")])).item() == 4.0
    assert _finite_mean(torch.tensor([1.0, float("nan"), 3.0])).item() == 2.0
    assert _finite_mean(torch.tensor([float("nan")])).item() == 0.0


def test_cosine_reaches_the_floor_at_the_last_step_and_stays_there():
    """One step after warm-up is the whole decay; steps past the end (a longer resumed run) keep the floor."""
    assert lr_factor(1, warmup=0, total=1, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(10, warmup=0, total=4, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
