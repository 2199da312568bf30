"""What a training run writes, figure by figure: the logged windows, results.json, each
checkpoint's trainer state, recipe and manifest, and the sample grids' steps."""

import json
from types import SimpleNamespace

import pytest

import carl
from carl.config import dump_recipe, load_recipe
from carl.training.logs import TrainingLog
from carl.training.schedule import learning_rate, lr_factor
from carl.training.trainer import Trainer


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


def test_a_finished_run_records_its_status_step_and_total_in_its_run_file(six_steps):
    record = json.loads((six_steps / ".carl" / "run.json").read_text())
    assert (record["status"], record["step"], record["total_steps"]) == ("finished", 6, 6)
