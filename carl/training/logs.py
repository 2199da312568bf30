"""What a training run tells its user: step lines (and a bar on a terminal), TensorBoard, a summary.

- **Step lines** are plain text, one every ``train.log_every`` steps, so that output sent to a
  file or a pipe reads like a log. The progress bar is drawn only on an interactive terminal
  (where the step lines are printed above it): redirected output never gets ``\\r`` redraws.
- **TensorBoard** (through accelerate's tracker) writes one events folder per run,
  ``<output>/logs``: loss, learning rate, grad norm, samples/s, epoch, eval metrics, the sample
  grids as images, and the resolved recipe (as text and as hyperparameters) in the same events
  file. A resumed run appends to the same folder and drops only the steps it is about to redo.
- **The summary** at the end: steps, epochs, wall time, final loss, throughput, and what the
  output folder now holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from carl.layout import (
    CACHE_MANIFEST,
    CARD_FILE,
    CHECKPOINTS,
    CONFIG_FILE,
    LOGS,
    RECIPE_FILE,
    REQUIREMENTS_FILE,
    RUN_TOKEN_CACHE,
    SAMPLES_DIR,
    SAMPLES_FILE,
    WEIGHTS_FILE,
    step_of,
)
from carl.progress import duration, interactive, size


@dataclass(frozen=True)
class StepStats:
    """The figures of one logged window of steps (means over the window)."""

    step: int
    total: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float | None
    samples_per_s: float

    def line(self, eta_s: float | None = None) -> str:
        parts = [f"step {self.step}/{self.total}", f"epoch {self.epoch:.2f}", f"loss {self.loss:.4f}", f"lr {self.lr:.2e}"]
        if self.grad_norm is not None:
            parts.append(f"grad norm {self.grad_norm:.3g}")
        parts.append(f"{self.samples_per_s:.0f} samples/s")
        if eta_s is not None and self.step < self.total:
            parts.append(f"eta {duration(eta_s)}")
        return " | ".join(parts)

    def scalars(self) -> dict[str, float]:
        values = {"train/loss": self.loss, "train/lr": self.lr, "train/samples/s": self.samples_per_s, "train/epoch": self.epoch}
        if self.grad_norm is not None:
            values["train/grad_norm"] = self.grad_norm
        return values


class TrainingLog:
    """Step lines, the progress bar and the TensorBoard run of one training run (main process only).

    Args:
        accelerator: the run's ``Accelerator`` (its trackers are used when ``tracking``).
        output: the run's output folder.
        total_steps: optimizer steps of the whole run.
        progress: draw a bar when stderr is a terminal (step lines are printed either way).
        tracking: write TensorBoard logs (``train.tracker`` is not ``none``).
    """

    def __init__(self, accelerator, *, output: Path, total_steps: int, progress: bool, tracking: bool):
        self.accelerator = accelerator
        self.output = Path(output)
        self.total_steps = total_steps
        self.main = accelerator.is_main_process
        self.bar_wanted = interactive(progress) and self.main
        self.tracking = tracking
        self.bar: tqdm | None = None
        self.first_step = 0
        self.started = time.perf_counter()

    # -- TensorBoard -------------------------------------------------------------------------------

    def start_tracking(self, step: int, recipe_yaml: str, hparams: dict) -> None:
        """Open ``<output>/logs`` and record the recipe. On resume from the checkpoint of ``step``, the
        events logged after it (steps that will be trained again) are purged; those of ``step``
        itself and before belong to the checkpointed run and stay."""
        if not self.tracking:
            return
        kwargs = {"tensorboard": {"purge_step": step + 1}} if step else {}
        # No `config=`: accelerate would store it with add_hparams, which opens a second,
        # timestamped events folder; the recipe goes into this run's own events file instead.
        self.accelerator.init_trackers(LOGS, init_kwargs=kwargs)
        writer = self._writer()
        if writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        writer.add_text("recipe", "\n".join("    " + line for line in recipe_yaml.splitlines()), global_step=step)
        for summary in hparams_summary(_tensorboard_values(hparams), {"train/loss": 0.0}):
            writer.file_writer.add_summary(summary)
        writer.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tracking:
            self.accelerator.log(values, step=step)

    def image(self, tag: str, path: Path, step: int) -> None:
        """A PNG (a sample grid) as a TensorBoard image."""
        writer = self._writer() if self.tracking else None
        if writer is None:
            return
        from PIL import Image

        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        writer.add_image(tag, pixels, global_step=step, dataformats="HWC")
        writer.flush()

    def _writer(self):
        if not self.main:
            return None
        return self.accelerator.get_tracker("tensorboard", unwrap=True)

    # -- the terminal ------------------------------------------------------------------------------

    def open(self, step: int) -> None:
        """Start timing (and the bar, on a terminal) at ``step`` (> 0 when resumed)."""
        self.first_step = step
        self.started = time.perf_counter()
        if self.bar_wanted:
            self.bar = tqdm(total=self.total_steps, initial=step, desc="training", dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write(self, line: str) -> None:
        """Print a line on the main process, above the bar if there is one."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def step(self, stats: StepStats) -> None:
        """A step line, the bar's figures and the TensorBoard scalars of one logged window."""
        done = stats.step - self.first_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (stats.total - stats.step) if done else None
        self.write(stats.line(eta))
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{stats.loss:.4f}", "samples/s": f"{stats.samples_per_s:.0f}"}, refresh=False)
        self.scalars(stats.scalars(), stats.step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- the end ---------------------------------------------------------------------------------

    def summary(self, *, step: int, epoch: float, final_loss: float | None, global_batch: int,
                folder: tuple[str, str] | None = None) -> list[str]:
        """The closing lines: what was done, how fast, and the files the output folder holds;
        ``folder``: what the output folder is and how to use it (default: a model folder)."""
        self.close()
        if not self.main:
            return []
        seconds = time.perf_counter() - self.started
        done = step - self.first_step
        head = f"carl: done: {step} steps ({epoch:.2f} epochs)"
        if self.first_step:
            head += f", {done} of them after resuming at step {self.first_step},"
        head += f" in {duration(seconds)}"
        if done and seconds > 0:
            head += f", {done * global_batch / seconds:.0f} samples/s"
        if final_loss is not None:
            head += f" | final loss {final_loss:.4f}"
        lines = [head, f"carl: wrote {self.output}/", *("    " + line for line in files_written(self.output, folder))]
        for line in lines:
            self.write(line)
        return lines


def files_written(output: Path, folder: tuple[str, str] | None = None) -> list[str]:
    """One line per kind of file in a run's output folder (the model or tokenizer folder, grids,
    logs, checkpoints); ``folder``: what the folder is and how to use it."""
    lines = []
    kind, use = folder or ("model folder", f"carl sample {output}")
    model = [p for p in (CONFIG_FILE, WEIGHTS_FILE, RECIPE_FILE, REQUIREMENTS_FILE, CARD_FILE) if (output / p).exists()]
    if model:
        weights = output / WEIGHTS_FILE
        shown = [f"{p} ({size(weights.stat().st_size)})" if p == WEIGHTS_FILE else p for p in model]
        lines.append(f"{kind:14s} {', '.join(shown)}  ({use})")
    grids = sorted((output / SAMPLES_DIR).glob("*.png"))
    if (output / SAMPLES_FILE).exists():
        lines.append(f"{SAMPLES_FILE:14s} the final sample grid; {SAMPLES_DIR}/step-*.png: {len(grids)} grid{'s' * (len(grids) != 1)}")
    events = sorted((output / LOGS).glob("events.out.tfevents.*"))
    if events:
        lines.append(f"{LOGS + '/':14s} TensorBoard: tensorboard --logdir {output / LOGS}")
    checkpoints = sorted(p.name for p in (output / CHECKPOINTS).glob("step-*") if p.is_dir() and step_of(p) is not None)
    if checkpoints:
        lines.append(f"{CHECKPOINTS + '/':14s} {', '.join(checkpoints)}  (continue with --resume)")
    if (output / RUN_TOKEN_CACHE / CACHE_MANIFEST).exists():
        lines.append(f"{RUN_TOKEN_CACHE + '/':14s} the training data, encoded once (cache: auto; safe to delete after the run)")
    return lines


def _tensorboard_values(tree: dict, prefix: str = "") -> dict:
    """A nested recipe dict as flat ``a.b.c`` keys with values TensorBoard's hparams accept."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_tensorboard_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
