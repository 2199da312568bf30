"""What a training run writes, figure by figure: the logged windows, results.json, each
checkpoint's trainer state, recipe and manifest, and the sample grids' steps."""

import json

import pytest

import carl
from carl.config import dump_recipe, load_recipe
from carl.logs import TrainingLog
from carl.train import Trainer, learning_rate, lr_factor

OVERRIDES = ["train.max_steps=8", "train.checkpoint_every=4", "train.log_every=4", "train.sample_every=3",
             "train.lr_schedule=cosine", "train.warmup_epochs=0.125"]  # tiny: 16 steps per epoch, warm-up 2 steps


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of 8 steps with its logged windows and per-step losses recorded."""
    out = tmp_path_factory.mktemp("run")
    windows, losses = [], []
    original_step, original_log = TrainingLog.step, Trainer._log
    TrainingLog.step = lambda self, stats: (windows.append(stats), original_step(self, stats))[1]
    Trainer._log = lambda self, loss, norm, rate: (losses.append(loss.clone()), original_log(self, loss, norm, rate))[1]
    try:
        cfg = load_recipe("tiny", OVERRIDES + [f"output={out}"])
        carl.train(cfg, output=out, progress=False)
    finally:
        TrainingLog.step, Trainer._log = original_step, original_log
    return out, cfg, windows, losses


def test_logged_windows_report_step_epoch_lr_and_throughput(run):
    out, cfg, windows, losses = run
    assert [(w.step, w.total, w.epoch) for w in windows] == [(4, 8, 0.25), (8, 8, 0.5)]
    assert [w.loss for w in windows] == [loss.item() for loss in losses]  # the window's mean, as reduced
    for w in windows:
        assert w.grad_norm is not None and w.grad_norm > 0 and w.samples_per_s > 0
        assert w.lr == pytest.approx(learning_rate(cfg.train) * lr_factor(w.step, warmup=2, total=8, schedule="cosine",
                                                               min_ratio=cfg.train.min_lr / learning_rate(cfg.train)))


def test_results_json_holds_the_run_s_figures(run):
    out, cfg, windows, _ = run
    figures = json.loads((out / "results.json").read_text())
    assert figures == {"steps": 8, "epochs": "0.50", "global batch": 32, "learning rate": "1.00e-03",
                       "training loss (last logged)": f"{windows[-1].loss:.4f}"}  # finished: no status


def test_each_checkpoint_holds_its_state_recipe_and_manifest(run):
    out, cfg, _, _ = run
    for step in (4, 8):
        folder = out / "checkpoints" / f"step-{step:07d}"
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state == {"step": step, "ema_updates": step, "epoch": step / 16, "num_processes": 1,
                         "accelerator_step": step, "skipped_nonfinite": 0}
        assert (folder / "recipe.yaml").read_text() == dump_recipe(cfg)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["step"] == step and manifest["num_processes"] == 1
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_sample_grids_at_every_sample_every_steps_and_at_the_end(run):
    out = run[0]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-0000003.png", "step-0000006.png",
                                                                    "step-0000008.png"]
    assert (out / "samples.png").read_bytes() == (out / "samples" / "step-0000008.png").read_bytes()


def test_the_run_log_says_where_it_resumed_or_that_it_starts_afresh(tmp_path, capsys):
    cfg = load_recipe("tiny", ["train.max_steps=2", "train.checkpoint_every=2"])
    carl.train(cfg, output=tmp_path / "fresh", progress=False, resume=True)
    assert f"carl: no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}; starting from scratch" in capsys.readouterr().out
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
