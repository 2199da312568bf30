"""The one training loop, on accelerate: :class:`Trainer` (``setup() -> train() -> cleanup()``,
or all three with :meth:`Trainer.run`).

The trainer owns the loop, the output folder, checkpoints, logging and the engine; what is
trained, exported and pictured is the job's business (:mod:`carl.training.jobs`). Users call
``carl.train(recipe, ...)`` (:mod:`carl.api`) or ``carl train`` (:mod:`carl.cli`).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader

from carl.config import RecipeConfig, TokenizerRecipeConfig, dump_recipe, to_dict
from carl.data import DataSource
from carl.errors import CarlError, TrainingInterrupted
from carl.layout import RECIPE_FILE, SAMPLES_DIR, step_name
from carl.training import checkpoints
from carl.training.accel import DeviceEMA, compile_model, loader_options, optimizer_options, resolve_mixed_precision
from carl.training.checkpoints import latest_checkpoint
from carl.training.jobs import job_for
from carl.training.logs import StepStats, TrainingLog
from carl.training.nonfinite import NonFiniteGuard
from carl.training.processes import check_process_group, on_main_process
from carl.training.run_folder import RunFolder
from carl.training.schedule import learning_rate, lr_factor, plan_batching
from carl.training.signals import StopOnSignal


class Trainer:
    """One training run of a validated recipe: ``setup() -> train() -> cleanup()`` (:meth:`run`
    does all three); every ``_setup_*`` helper returns what it built.

    Args:
        cfg: the resolved recipe (an AR recipe or a tokenizer recipe).
        output: the output folder (default: ``cfg.output``); a run refuses a non-empty folder it did
            not create and locks the folder while it trains.
        resume: continue from the newest intact checkpoint in ``output``.
        progress: draw a progress bar on a terminal (step lines are printed either way).
        overwrite: start a new run in a non-empty folder (see :class:`carl.training.run_folder.RunFolder`).
    """

    def __init__(self, cfg: RecipeConfig | TokenizerRecipeConfig, output: str | Path | None = None, *,
                 resume: bool = False, progress: bool = True, overwrite: bool = False):
        self.output = Path(output or cfg.output)
        self.cfg = replace(cfg, output=str(self.output))  # recipe.yaml and hparams.yml record the folder used
        self.job = job_for(self.cfg)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.run_folder: RunFolder | None = None
        self.stop = StopOnSignal()

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        train = self.cfg.train
        checkpoints.check_keep(train.keep_checkpoints)
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(train.mixed_precision),
            log_with=None if train.tracker == "none" else train.tracker,
            project_dir=str(self.output),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        )
        check_process_group(self.accelerator.num_processes)
        self._claim_output()
        self.batching = plan_batching(train, self.accelerator.num_processes)
        self.accelerator.gradient_accumulation_steps = self.batching.accumulation
        set_seed(train.seed)
        self.source, dataset = self._setup_data()
        self.model = self.job.build(self.source, dataset, self.resume)
        self.ema = DeviceEMA(self.model, train.ema_decay, device=self.accelerator.device)
        if train.compile:  # after the EMA's copy, which stays eager (it samples with a KV cache)
            compile_model(self.model, train.compile_mode)
        loader = self._setup_loader(dataset)
        self.steps_per_epoch = max(1, len(loader) // (self.accelerator.num_processes * self.batching.accumulation))
        self.total_steps = train.max_steps or math.ceil(train.epochs * self.steps_per_epoch)
        self.optimizer, self.scheduler = self._setup_optimizer()
        every = self.cfg.eval.every_epochs
        self.last_loss = None
        self.eval_every = max(1, round(every * self.steps_per_epoch)) if every else None
        self.job_figures: dict[str, str] = {}
        self.finished = False  # whether job.finish() has run on the EMA weights
        self.eval_figures: dict[str, str] = {}  # the latest evaluation's, for the card
        self.model, self.optimizer, self.loader = self.accelerator.prepare(self.model, self.optimizer, loader)
        self.guard = NonFiniteGuard(skip_limit=train.skip_nonfinite, check_grads=self.accelerator.mixed_precision != "fp16",
                                    device=self.accelerator.device)
        self.step = self._restore() if self.resume else 0
        self.log = TrainingLog(self.accelerator, output=self.output, total_steps=self.total_steps,
                               progress=self.progress, tracking=train.tracker != "none")
        self.log.start_tracking(self.step, dump_recipe(self.cfg), to_dict(self.cfg))
        self._log_setup()

    def _claim_output(self) -> None:
        """Own the output folder before the first step: refuse foreign or finished contents, prove
        it writable and lock it (main process; every process fails alike)."""
        acc = self.accelerator
        folder = on_main_process(acc, lambda: RunFolder.claim(self.output, resume=self.resume, overwrite=self.overwrite,
                                                               say=acc.print))
        self.run_folder = folder if acc.is_main_process else None

    def _setup_data(self) -> tuple[DataSource, torch.utils.data.Dataset]:
        source = self.cfg.data.build("datasets")
        dataset = self.job.dataset(source)
        if len(dataset) < self.cfg.train.global_batch:
            raise CarlError(f"the dataset has {len(dataset)} items, fewer than train.global_batch {self.cfg.train.global_batch}")
        return source, dataset

    def _setup_loader(self, dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batching.micro_batch,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
            **loader_options(self.accelerator.device, self.cfg.train.num_workers),
        )

    def _setup_optimizer(self):
        train = self.cfg.train
        lr = learning_rate(train)
        optimizer = torch.optim.AdamW(self.job.param_groups(self.model, train, lr), lr=lr, betas=train.betas,
                                      **optimizer_options(self.accelerator.device))
        warmup = max(round(train.warmup_epochs * self.steps_per_epoch), train.warmup_steps)
        min_ratio = train.min_lr / lr if lr else 0.0
        if warmup >= self.total_steps / 2:  # a short run of a long recipe: it would hardly train at its rate
            self.accelerator.print(
                f"carl: warning: the learning-rate warm-up ({warmup} steps: train.warmup_epochs {train.warmup_epochs:g}, "
                f"train.warmup_steps {train.warmup_steps}) takes {min(warmup, self.total_steps)} of the run's "
                f"{self.total_steps} steps{', so the rate never reaches its peak' if warmup >= self.total_steps else ''}; "
                f"train longer or shorten the warm-up")

        def factor(step: int) -> float:
            return lr_factor(step, warmup=warmup, total=self.total_steps, schedule=train.lr_schedule, min_ratio=min_ratio)

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _log_setup(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        b = self.batching
        self.accelerator.print(
            f"carl: {self.job.kind} job, {trainable / 1e6:.2f}M trainable parameters | {self.accelerator.num_processes} process(es) on "
            f"{self.accelerator.device} ({self.accelerator.mixed_precision} mixed precision) | global batch {self.cfg.train.global_batch} = {b.micro_batch} x "
            f"{self.accelerator.num_processes} x {b.accumulation} accumulation | lr {learning_rate(self.cfg.train):.2e} | "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps | output {self.output}"
        )

    # -- checkpoints -----------------------------------------------------------------------------

    def _restore(self) -> int:
        """Continue from the newest intact checkpoint (damaged newer ones are reported and set aside)."""
        acc = self.accelerator
        checkpoint = on_main_process(acc, lambda: checkpoints.choose_checkpoint(self.output, say=acc.print))
        if checkpoint is None:
            acc.print(f"carl: no checkpoint in {checkpoints.checkpoint_path(self.output, 0).parent}; starting from scratch")
            return 0
        state = checkpoints.load_training_state(
            checkpoint, model=acc.unwrap_model(self.model), ema=self.ema, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=acc.scaler, num_processes=acc.num_processes, rank=acc.process_index)
        acc.step = state["accelerator_step"]
        self.guard.skipped, self.guard.checked_step = state["skipped_nonfinite"], state["step"]
        # A checkpoint taken after job.finish() (the last one) must not be finished twice.
        self.finished, self.job_figures = bool(state.get("finished", False)), dict(state.get("job_figures", {}))
        acc.print(f"carl: resumed from {checkpoint} at step {state['step']}")
        return state["step"]

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N``: every file into a ``.tmp`` folder, the manifest (sizes and
        hashes) last, then rename it; never from non-finite weights."""
        acc = self.accelerator
        self._check_finite(weights=True)
        final = checkpoints.checkpoint_path(self.output, self.step)
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        checkpoints.save_rng(tmp, acc.process_index)
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": self.step, "ema_updates": int(self.ema.n_averaged), "epoch": self.step / self.steps_per_epoch,
                     "num_processes": acc.num_processes, "accelerator_step": acc.step,
                     "skipped_nonfinite": self.guard.skipped, "finished": self.finished, "job_figures": self.job_figures}
            checkpoints.save_training_state(tmp, model=acc.unwrap_model(self.model), ema=self.ema, optimizer=self.optimizer,
                                            scheduler=self.scheduler, scaler=acc.scaler, trainer_state=state)
            (tmp / RECIPE_FILE).write_text(dump_recipe(self.cfg))
            checkpoints.write_manifest(tmp, step=self.step, num_processes=acc.num_processes)
            checkpoints.publish(tmp, final)
            checkpoints.prune(self.output, self.cfg.train.keep_checkpoints, final)
            self.export()
        acc.wait_for_everyone()
        return final

    def _check_finite(self, weights: bool = False) -> None:
        """Stop a diverged run before it writes anything from its non-finite steps."""
        last = latest_checkpoint(self.output)
        last_good = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        self.guard.check(self.step, last_good)
        if weights:
            self.guard.check_weights(self.step, last_good, model=self.accelerator.unwrap_model(self.model),
                                     ema=self.ema.module)

    def export(self) -> None:
        """The output folder in the job's published form (a model folder, a tokenizer folder), from the EMA weights."""
        self.job.export(self.ema.module, self.output, self._figures())

    def _figures(self) -> dict:
        """This run's figures for the card."""
        figures = {"steps": self.step, "epochs": f"{self.step / self.steps_per_epoch:.2f}",
                   "global batch": self.cfg.train.global_batch, "learning rate": f"{learning_rate(self.cfg.train):.2e}"}
        if self.last_loss is not None:
            figures["training loss (last logged)"] = f"{self.last_loss:.4f}"
        if self.step < self.total_steps:  # a checkpoint during training, or an interrupted run
            figures["status"] = f"unfinished: step {self.step} of {self.total_steps} (continue with `carl train ... --resume`)"
        return {**figures, **self.eval_figures, **self.job_figures}

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> Path:
        acc, train = self.accelerator, self.cfg.train
        self.log.open(self.step)
        losses, norms, window_start, window_steps = [], [], time.perf_counter(), 0
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        if self.step < self.total_steps:
            self.finished = False  # the EMA takes the model's buffers again: finish() is due at the new end
        while self.step < self.total_steps:
            self.loader.set_epoch(epoch)
            batches = acc.skip_first_batches(self.loader, skip * self.batching.accumulation) if skip else self.loader
            for batch in batches:
                self._before_step()
                with acc.accumulate(self.model):
                    loss = self.model(batch)
                    self.guard.observe_loss(loss)
                    acc.backward(loss)
                    if not (acc.sync_gradients and self._end_step(norms)):  # True: a non-finite step skipped
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                self.ema.update_parameters(acc.unwrap_model(self.model))
                self.step += 1
                window_steps += 1
                self.log.advance()
                if self.step % train.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    self._log(_finite_mean(torch.stack(losses)), torch.stack(norms).float().mean() if norms else None,
                              window_steps / elapsed)
                    losses, norms, window_start, window_steps = [], [], time.perf_counter(), 0
                if train.sample_every and self.step % train.sample_every == 0:
                    self.sample_grid()
                if self.eval_every and self.step % self.eval_every == 0:
                    self.evaluate()
                if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                    self.save_checkpoint()
                signum = self.stop.requested(acc.num_processes, acc.device)
                if signum:
                    self._interrupt(signum)
                if self.step >= self.total_steps:
                    break
            epoch, skip = epoch + 1, 0
        self.log.close()
        if not self.finished and self.accelerator.is_main_process:  # e.g. a tokenizer's normalisation, once
            self.job_figures = self.job.finish(self.ema.module, self.loader.dataset)
        self.finished = True
        last = latest_checkpoint(self.output)
        if last is None or last.name != step_name(self.step):
            self.save_checkpoint()  # exports before anything draws (a failing render loses nothing)
        elif self.accelerator.is_main_process:  # already exported at this step: refresh what finish() changed
            self.job.refresh_card(self.ema.module, self.output, self._figures())
        if self.sample_grid() is not None:  # main process, picturable data: the card shows the final picture
            self.job.refresh_card(self.ema.module, self.output, self._figures())
        self.log.summary(step=self.step, epoch=self.step / self.steps_per_epoch, final_loss=self.last_loss,
                         global_batch=self.cfg.train.global_batch, folder=self.job.describe_output(self.output))
        return self.output

    def _end_step(self, norms: list[torch.Tensor]) -> bool:
        """Clip the gradients (max norm inf without ``grad_clip``: the norm for the logs, gradients
        unchanged); True if this optimizer step is non-finite and to be skipped."""
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip or math.inf)
        norms += [norm] if norm is not None else []
        return self.guard.end_step(self.step + 1, norm)

    def _interrupt(self, signum: int) -> None:
        """Checkpoint this step (unless it has one) and stop with the signal's exit code."""
        last = latest_checkpoint(self.output)
        if last is None or checkpoints.checkpoint_step(last) != self.step:
            self.save_checkpoint()
        raise TrainingInterrupted(self.step, signum)

    def _before_step(self) -> None:
        self.job.before_step(self.accelerator.unwrap_model(self.model), self.step / self.steps_per_epoch)

    def _log(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, steps_per_s: float) -> None:
        self._check_finite()
        loss = self.accelerator.reduce(loss, reduction="mean").item()
        self.last_loss = loss
        self.log.step(StepStats(step=self.step, total=self.total_steps, epoch=self.step / self.steps_per_epoch, loss=loss,
                                lr=self.scheduler.get_last_lr()[0], grad_norm=None if grad_norm is None else grad_norm.item(),
                                samples_per_s=steps_per_s * self.cfg.train.global_batch))

    def evaluate(self) -> dict[str, float]:
        """The job's held-out figures on the EMA weights (main process), logged as ``eval/<name>``."""
        metrics: dict[str, float] = {}
        self._check_finite()
        if self.accelerator.is_main_process:
            start = time.perf_counter()
            metrics = self.job.evaluate(self.ema.module)
            self.eval_figures = {f"{k} (eval.metric, step {self.step})": f"{v:.4g}" for k, v in metrics.items()}
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.log.write(f"eval at step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}): {shown} "
                           f"[{time.perf_counter() - start:.1f}s]")
            self.log.scalars({f"eval/{k}": v for k, v in metrics.items()}, self.step)
        self.accelerator.wait_for_everyone()
        return metrics

    def sample_grid(self) -> Path | None:
        """The job's picture of the EMA weights (a sample grid, reconstructions) as PNG, the latest
        also as ``<output>/<job.picture>``."""
        self._check_finite()
        if not self.accelerator.is_main_process:
            return None
        path = self.output / SAMPLES_DIR / f"{step_name(self.step)}.png"
        saved = self.job.preview(self.ema.module, self.source, path)
        if saved is not None:
            shutil.copyfile(saved, self.output / self.job.picture)
            self.log.image(self.job.picture.removesuffix(".png"), saved, self.step)
        return saved

    def run(self) -> Path:
        """Set up, train to the end (or resume) and clean up; returns the output folder.

        Raises:
            TrainingInterrupted: SIGINT / SIGTERM: a checkpoint was written; ``exit_code`` is 130 / 143.
            NonFiniteError: the run diverged; nothing from its non-finite steps was written.
        """
        status = "failed"
        try:
            self.setup()
            with self.stop:
                out = self.train()
            status = "finished"
            return out
        except (TrainingInterrupted, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            self.cleanup(status)

    def cleanup(self, status: str = "finished") -> None:
        """End the trackers, record how the run ended (``finished``, ``interrupted``, ``failed``) and unlock
        the output folder; safe after a setup that failed half-way."""
        if hasattr(self, "accelerator"):
            self.accelerator.end_training()
            # accelerate keeps one state per process and refuses a later run's other precision
            # (a notebook that trains in bf16, then in fp32); the process group stays
            AcceleratorState._reset_state()
        if self.run_folder is not None:
            self.run_folder.set_status(status, step=getattr(self, "step", 0), total_steps=getattr(self, "total_steps", None))
            self.run_folder.release()


def _finite_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of the finite entries (the losses of skipped non-finite steps left out)."""
    finite = torch.isfinite(values)
    return torch.where(finite, values, 0).sum() / finite.sum().clamp(min=1)
