"""What a run tells its user (:mod:`carl.training.logs`): plain step lines when not on a terminal, a
bar when it is, the final summary, one TensorBoard events folder with scalars, sample grids and the
recipe."""

import contextlib
import io
import shutil

import numpy as np
import pytest
from helpers import Terminal
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from carl.api import train
from carl.config import load_recipe
from carl.layout import CHECKPOINTS, LOGS, step_name
from carl.training.logs import StepStats


def run_tiny(output, stderr, *overrides, progress=True) -> str:
    cfg = load_recipe("tiny", ["train.max_steps=4", "train.log_every=2", "train.checkpoint_every=null", "data.num_samples=128",
                               "sample.rows=2", "sample.per_row=2", *overrides])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        train(cfg, output=output, progress=progress)
    return stdout.getvalue() + stderr.getvalue()


@pytest.fixture(scope="module")
def redirected_run(tmp_path_factory):
    """A tiny run (sample grids every 2 steps, eval every epoch) with stdout and stderr not terminals."""
    out = tmp_path_factory.mktemp("run")
    text = run_tiny(out, io.StringIO(), "train.sample_every=2", "eval.every_epochs=1", "eval.metric={name: loss, num_items: 32}")
    return out, text


def test_redirected_output_has_step_lines_and_no_redraws(redirected_run):
    _, text = redirected_run
    assert "\r" not in text  # the old bar redrew itself with \r into the redirected stream
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == ["step 2/4", "step 4/4"]
    assert all("loss " in line and "lr " in line and "grad norm " in line and "samples/s" in line for line in steps)
    assert "samples_s" not in text


def test_summary_names_steps_time_loss_and_files(redirected_run):
    out, text = redirected_run
    lines = text.splitlines()
    done = next(line for line in lines if line.startswith("carl: done:"))
    assert done.startswith("carl: done: 4 steps (1.00 epochs) in ") and " | final loss " in done and "samples/s" in done
    wrote = "\n".join(lines[lines.index(f"carl: wrote {out}/"):])
    for expected in ("model.safetensors (", "config.json", "recipe.yaml", "samples.png", "samples/step-*.png: 2 grids",
                     f"tensorboard --logdir {out / LOGS}", "checkpoints/", "step-0000004", "--resume"):
        assert expected in wrote


def test_one_events_folder_with_scalars_images_and_recipe(redirected_run):
    out, _ = redirected_run
    events = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("events.out.tfevents.*"))
    assert events == [LOGS]  # not <out>/carl/ plus a timestamped folder from add_hparams
    assert not (out / "carl").exists()
    log = EventAccumulator(str(out / LOGS), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    log.Reload()
    tags = log.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples/s", "train/epoch", "eval/loss_train"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in log.Scalars("train/grad_norm")] == [2, 4]
    assert all(np.isfinite(e.value) and e.value > 0 for e in log.Scalars("train/grad_norm"))
    images = log.Images("samples")
    assert [e.step for e in images] == [2, 4, 4] or [e.step for e in images] == [2, 4]
    assert (images[-1].width, images[-1].height) == (2 * 124, 2 * 124)  # 2 x 2 tiles of 120 px, padded by 2
    recipe = log.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: toy" in recipe and "max_steps: 4" in recipe


def test_terminal_gets_a_bar_and_the_step_lines_above_it(tmp_path):
    terminal = Terminal()
    text = run_tiny(tmp_path, terminal, "train.tracker=none")
    assert "training:" in terminal.getvalue() and "\r" in terminal.getvalue()  # tqdm's bar
    assert "step 2/4 |" in text and "carl: done: 4 steps" in text
    assert not (tmp_path / LOGS).exists()  # tracker none: no TensorBoard folder


def test_no_progress_means_no_bar_even_on_a_terminal(tmp_path):
    terminal = Terminal()
    text = run_tiny(tmp_path, terminal, "train.tracker=none", progress=False)
    assert "\r" not in text and "step 4/4 |" in text


def test_step_line_and_scalars():
    stats = StepStats(step=20, total=60, epoch=1.25, loss=1.5, lr=1e-3, grad_norm=3.5, samples_per_s=812.4)
    assert stats.line(eta_s=75) == "step 20/60 | epoch 1.25 | loss 1.5000 | lr 1.00e-03 | grad norm 3.5 | 812 samples/s | eta 0:01:15"
    assert stats.scalars()["train/samples/s"] == 812.4 and stats.scalars()["train/grad_norm"] == 3.5


def test_a_resumed_run_keeps_the_tensorboard_points_logged_before_its_checkpoint(tmp_path):
    """A run killed at step 10 after its step-8 checkpoint resumes from 8: only the points after 8
    are purged, so TensorBoard shows every loss point of steps 1..12 once (it used to drop the
    earlier ones as out of order when the resumed run wrote its first event)."""
    run = ["train.log_every=1", "train.checkpoint_every=4", "train.lr_schedule=constant"]
    out = train("tiny", [*run, "train.max_steps=10"], output=tmp_path / "run", progress=False)
    shutil.rmtree(out / CHECKPOINTS / step_name(10))  # as if killed after logging steps 9 and 10
    train("tiny", [*run, "train.max_steps=12"], output=out, resume=True, progress=False)  # from step 8
    log = EventAccumulator(str(out / LOGS), size_guidance={"scalars": 0})
    log.Reload()
    assert [e.step for e in log.Scalars("train/loss")] == list(range(1, 13))
