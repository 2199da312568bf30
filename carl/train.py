"""The one training loop, on accelerate: ``train(cfg) -> output folder``."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from carl.accel import DeviceEMA, compile_model, loader_options, optimizer_options
from carl.cache import is_complete, load_cache
from carl.config import RecipeConfig, TrainConfig, dump_recipe, to_dict
from carl.data import DataSource
from carl.hub import write_model_folder_extras
from carl.model import ContinuousAR
from carl.plugins import CarlError
from carl.samples import save_sample_grid

CHECKPOINTS = "checkpoints"
FIT_SAMPLES = 4096


@dataclass
class Batching:
    micro_batch: int  # per device and forward pass
    accumulation: int  # forward passes per optimizer step


def plan_batching(train: TrainConfig, num_processes: int) -> Batching:
    """Reach ``global_batch`` samples per optimizer step on any number of devices."""
    if train.micro_batch is None:
        if train.global_batch % num_processes:
            raise CarlError(f"train.global_batch {train.global_batch} is not divisible by {num_processes} processes")
        return Batching(train.global_batch // num_processes, 1)
    per_step = train.micro_batch * num_processes
    if train.global_batch % per_step:
        raise CarlError(
            f"train.global_batch {train.global_batch} is not a multiple of train.micro_batch x processes = {per_step}"
        )
    return Batching(train.micro_batch, train.global_batch // per_step)


def learning_rate(train: TrainConfig) -> float:
    return train.lr if train.lr is not None else train.base_lr * train.global_batch / 256


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_temperature(schedule: tuple[tuple[float, float], ...], epoch: float) -> float:
    """The value of the last ``(from_epoch, temperature)`` pair that has started."""
    current = 1.0
    for start, value in sorted(schedule):
        if epoch >= start:
            current = value
    return current


def param_groups(model: ContinuousAR, train: TrainConfig, lr: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms, positions and mask tokens; the head at ``head_lr_scale``."""
    skip = model.no_weight_decay()
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and name not in skip
        head = name.startswith("score.")
        groups.setdefault((decay, head), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": train.weight_decay if decay else 0.0,
            "lr": lr * (train.head_lr_scale if head else 1.0),
            "lr_scale": train.head_lr_scale if head else 1.0,
        }
        for (decay, head), params in sorted(groups.items())
    ]


def latest_checkpoint(output: Path) -> Path | None:
    done = sorted(p for p in (output / CHECKPOINTS).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


class Trainer:
    """setup() -> train() -> cleanup(); every ``_setup_*`` helper returns what it built."""

    def __init__(self, cfg: RecipeConfig, output: Path | None = None, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.output = Path(output or cfg.output)
        self.resume = resume
        self.progress = progress

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        train = self.cfg.train
        self._check_output()
        self.accelerator = Accelerator(
            mixed_precision=train.mixed_precision,
            log_with=None if train.tracker == "none" else train.tracker,
            project_dir=str(self.output),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        )
        self.batching = plan_batching(train, self.accelerator.num_processes)
        self.accelerator.gradient_accumulation_steps = self.batching.accumulation
        set_seed(train.seed)
        self.source, dataset = self._setup_data()
        self.model = self._setup_model(dataset)
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
        self.metric = self.cfg.eval.metric.build("metrics") if every else None
        self.model, self.optimizer, self.loader = self.accelerator.prepare(self.model, self.optimizer, loader)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.step = self._restore() if self.resume else 0
        if train.tracker != "none":
            self.accelerator.init_trackers("carl", config=_flat(to_dict(self.cfg)))
        self._log_setup()

    def _check_output(self) -> None:
        if not self.resume and latest_checkpoint(self.output) is not None:
            raise CarlError(
                f"{self.output} already holds checkpoints; pass --resume to continue that run, or choose another --output"
            )

    def _setup_data(self) -> tuple[DataSource, torch.utils.data.Dataset]:
        source = self.cfg.data.build("datasets")
        self.cached_tokenizer = None
        if self.cfg.cache is not None:
            folder = Path(self.cfg.cache)
            if not is_complete(folder):
                raise CarlError(f"the recipe reads the token cache {folder}, which is not complete: "
                                f"run `carl cache` with this recipe first (it resumes where it stopped)")
            dataset, self.cached_tokenizer = load_cache(self.cfg, folder)
        else:
            dataset = source.dataset("train")
        if len(dataset) < self.cfg.train.global_batch:
            raise CarlError(f"the dataset has {len(dataset)} items, fewer than train.global_batch {self.cfg.train.global_batch}")
        return source, dataset

    def _setup_model(self, dataset) -> ContinuousAR:
        model = ContinuousAR(self.cfg.model)
        if self.resume:
            return model  # the checkpoint holds the tokenizer state
        if self.cached_tokenizer is not None:  # decode with exactly the state that encoded the cache
            model.tokenizer.load_state_dict(self.cached_tokenizer)
            return model
        model.tokenizer.prepare()
        if model.tokenizer.needs_fit:
            count = min(len(dataset), FIT_SAMPLES)
            model.tokenizer.fit(dataset[:count]["data"])
        return model

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
        optimizer = torch.optim.AdamW(param_groups(self.model, train, lr), lr=lr, betas=train.betas,
                                      **optimizer_options(self.accelerator.device))
        warmup = round(train.warmup_epochs * self.steps_per_epoch)
        min_ratio = train.min_lr / lr if lr else 0.0

        def factor(step: int) -> float:
            return lr_factor(step, warmup=warmup, total=self.total_steps, schedule=train.lr_schedule, min_ratio=min_ratio)

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _log_setup(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        b = self.batching
        self.accelerator.print(
            f"carl: {trainable / 1e6:.2f}M trainable parameters | {self.accelerator.num_processes} process(es) on "
            f"{self.accelerator.device} | global batch {self.cfg.train.global_batch} = {b.micro_batch} x "
            f"{self.accelerator.num_processes} x {b.accumulation} accumulation | lr {learning_rate(self.cfg.train):.2e} | "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps | output {self.output}"
        )

    # -- checkpoints -----------------------------------------------------------------------------

    def _restore(self) -> int:
        checkpoint = latest_checkpoint(self.output)
        if checkpoint is None:
            self.accelerator.print(f"carl: no checkpoint in {self.output / CHECKPOINTS}; starting from scratch")
            return 0
        self.accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        self.ema.module.load_state_dict(load_file(checkpoint / "ema.safetensors"))
        self.ema.n_averaged.fill_(state["ema_updates"])
        self.accelerator.print(f"carl: resumed from {checkpoint} at step {state['step']}")
        return state["step"]

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` atomically: a ``.tmp`` folder renamed once complete."""
        final = self.output / CHECKPOINTS / f"step-{self.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        if self.accelerator.is_main_process:
            save_file(_contiguous(self.ema.module.state_dict()), tmp / "ema.safetensors")
            state = {"step": self.step, "ema_updates": int(self.ema.n_averaged), "epoch": self.step / self.steps_per_epoch}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            (tmp / "recipe.yaml").write_text(dump_recipe(self.cfg))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_checkpoints()
            self.export()
        self.accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        done = sorted(p for p in (self.output / CHECKPOINTS).glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: -self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old)

    def export(self) -> None:
        """The output folder as a model folder: EMA weights, config.json, the resolved recipe,
        the plugin requirements and a model card."""
        self.ema.module.save_pretrained(self.output)
        self._write_extras()

    def _write_extras(self) -> None:
        """``recipe.yaml``, ``carl.json`` and the model card, with this run's figures."""
        figures = {"steps": self.step, "epochs": f"{self.step / self.steps_per_epoch:.2f}",
                   "global batch": self.cfg.train.global_batch, "learning rate": f"{learning_rate(self.cfg.train):.2e}"}
        if self.last_loss is not None:
            figures["training loss (last logged)"] = f"{self.last_loss:.4f}"
        write_model_folder_extras(self.output, self.cfg, figures)

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> Path:
        acc, train = self.accelerator, self.cfg.train
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", disable=not (self.progress and acc.is_main_process))
        losses, window_start, window_steps = [], time.perf_counter(), 0
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        while self.step < self.total_steps:
            self.loader.set_epoch(epoch)
            batches = acc.skip_first_batches(self.loader, skip * self.batching.accumulation) if skip else self.loader
            for batch in batches:
                self._set_train_temperature()
                with acc.accumulate(self.model):
                    loss = self.model(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and train.grad_clip:
                        acc.clip_grad_norm_(self.model.parameters(), train.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                self.ema.update_parameters(acc.unwrap_model(self.model))
                self.step += 1
                window_steps += 1
                bar.update(1)
                if self.step % train.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    self._log(torch.stack(losses).mean(), window_steps / elapsed, bar)
                    losses, window_start, window_steps = [], time.perf_counter(), 0
                if train.sample_every and self.step % train.sample_every == 0:
                    self.sample_grid()
                if self.eval_every and self.step % self.eval_every == 0:
                    self.evaluate()
                if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step >= self.total_steps:
                    break
            epoch, skip = epoch + 1, 0
        bar.close()
        self.sample_grid()
        last = latest_checkpoint(self.output)
        if last is None or last.name != f"step-{self.step:07d}":
            self.save_checkpoint()  # exports the model folder, with the final grid in its card
        elif self.accelerator.is_main_process:  # weights already exported: refresh the card (now with the grid)
            self._write_extras()
        return self.output

    def _set_train_temperature(self) -> None:
        epoch = self.step / self.steps_per_epoch
        temperature = train_temperature(self.cfg.train.train_temperature, epoch)
        self.accelerator.unwrap_model(self.model).score.set_train_temperature(temperature)

    def _log(self, loss: torch.Tensor, steps_per_s: float, bar: tqdm) -> None:
        loss = self.accelerator.reduce(loss, reduction="mean").item()
        self.last_loss = loss
        lr = self.scheduler.get_last_lr()[0]
        samples_per_s = steps_per_s * self.cfg.train.global_batch
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.0f}")
        metrics = {"train/loss": loss, "train/lr": lr, "train/samples_per_s": samples_per_s, "train/epoch": self.step / self.steps_per_epoch}
        if self.cfg.train.tracker != "none":
            self.accelerator.log(metrics, step=self.step)
        if not self.progress:
            self.accelerator.print(f"step {self.step}/{self.total_steps} loss {loss:.4f} lr {lr:.2e} {samples_per_s:.0f} samples/s")

    def evaluate(self) -> dict[str, float]:
        """The recipe's metric on the EMA weights (main process), logged as ``eval/<name>``."""
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process:
            start = time.perf_counter()
            metrics = self.metric.compute(self.ema.module.eval(), self.cfg)
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.accelerator.print(f"eval at step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}): {shown} "
                                   f"[{time.perf_counter() - start:.1f}s]")
            if self.cfg.train.tracker != "none":
                self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.step)
        self.accelerator.wait_for_everyone()
        return metrics

    def sample_grid(self) -> Path | None:
        """Sample a grid with the EMA weights (rows of ``grid_conditions``) and save it as PNG."""
        if not self.accelerator.is_main_process:
            return None
        path = self.output / "samples" / f"step-{self.step:07d}.png"
        saved = save_sample_grid(self.ema.module, self.source, self.cfg.sample, path)
        if saved is not None:
            shutil.copyfile(saved, self.output / "samples.png")
        return saved

    def cleanup(self) -> None:
        self.accelerator.end_training()


def train(cfg: RecipeConfig, output: Path | str | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train ``cfg`` to completion (or resume it) and return the output model folder."""
    trainer = Trainer(cfg, Path(output) if output else None, resume=resume, progress=progress)
    trainer.setup()
    try:
        return trainer.train()
    finally:
        trainer.cleanup()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
