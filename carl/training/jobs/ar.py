"""The AR job: a :class:`ContinuousAR` over a frozen tokenizer, trained with its scoring rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from carl.config import RecipeConfig, TrainConfig
from carl.data import DataSource
from carl.errors import CarlError
from carl.model import ContinuousAR, open_model
from carl.model.folder import write_model_folder_extras
from carl.model.samples import save_sample_grid
from carl.tokenizers.base import prepare_tokenizer
from carl.training.cache import AUTO, is_complete, load_cache, run_cache
from carl.training.checks import check_data_fits
from carl.training.jobs.base import Job
from carl.weights import load_strict


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


class ARJob(Job):
    """Trains the recipe's ``model``; the output folder becomes a model folder (``carl sample``)."""

    kind = "ar"
    cfg: RecipeConfig

    def __init__(self, cfg: RecipeConfig):
        super().__init__(cfg)
        every = cfg.eval.every_epochs
        self.metric = cfg.eval.metric.build("metrics") if every else None
        self.cached_tokenizer = None  # the tokenizer state a token cache was encoded with
        self.cache_folder: Path | None = None

    def dataset(self, source: DataSource):
        """The data source's ``train`` split, or the rows of the recipe's token cache (``cache:``)."""
        if self.cfg.cache is None:
            return source.dataset("train")
        folder = self.cache_folder = run_cache(self.cfg) if self.cfg.cache == AUTO else Path(self.cfg.cache)
        if not is_complete(folder):
            raise CarlError(f"the recipe reads the token cache {folder}, which is not complete: "
                            f"run `carl cache` with this recipe first (it resumes where it stopped)")
        dataset, self.cached_tokenizer = load_cache(self.cfg, folder)
        return dataset

    def build(self, source: DataSource, dataset, resume: bool) -> ContinuousAR:
        model = ContinuousAR(self.cfg.model)
        check_data_fits(source, dataset, model.tokenizer, data=self.cfg.data.name, tokenizer_name=self.cfg.model.tokenizer.name)
        if resume:
            return model  # the checkpoint holds every weight, the tokenizer's state included
        if self.cfg.train.init_from is not None:
            self._init_from(model, self.cfg.train.init_from)
        elif self.cached_tokenizer is None:
            prepare_tokenizer(model.tokenizer, dataset)
        if self.cached_tokenizer is not None:  # decode with exactly the state that encoded the cache
            self._use_cached_tokenizer(model)
        return model

    @staticmethod
    def _init_from(model: ContinuousAR, reference: str) -> None:
        """Fine-tuning: every weight (the tokenizer's state included) from a trained model, strictly."""
        pretrained = open_model(reference).model
        load_strict(model, pretrained.state_dict(), source=f"train.init_from {reference}")

    def _use_cached_tokenizer(self, model: ContinuousAR) -> None:
        if self.cfg.train.init_from is not None:
            state = model.tokenizer.state_dict()
            if state.keys() != self.cached_tokenizer.keys() or any(
                    not torch.equal(state[k], self.cached_tokenizer[k]) for k in state):
                raise CarlError(f"the token cache {self.cache_folder} was encoded by another tokenizer state than the one "
                                f"train.init_from {self.cfg.train.init_from} holds: rebuild the cache with `carl cache`")
        model.tokenizer.load_state_dict(self.cached_tokenizer)

    def param_groups(self, module: nn.Module, train: TrainConfig, lr: float) -> list[dict]:
        return param_groups(module, train, lr)

    def before_step(self, module: ContinuousAR, epoch: float) -> None:
        module.score.set_train_temperature(train_temperature(self.cfg.train.train_temperature, epoch))

    def evaluate(self, module: ContinuousAR) -> dict[str, float]:
        return self.metric.compute(module.eval(), self.cfg) if self.metric is not None else {}

    def export(self, module: ContinuousAR, folder: Path, figures: dict) -> None:
        module.save_pretrained(folder, recipe=self._resolved(module), figures=figures)

    def refresh_card(self, module: ContinuousAR, folder: Path, figures: dict) -> None:
        write_model_folder_extras(folder, self._resolved(module), figures)  # the weights are not re-saved

    def _resolved(self, module: ContinuousAR) -> RecipeConfig:
        """The recipe as the model resolved it (a tokenizer ``path`` with the architecture it read),
        so that the model folder loads without the tokenizer folder."""
        return dataclasses.replace(self.cfg, model=module.config)

    def preview(self, module: ContinuousAR, source: DataSource, path: Path) -> Path | None:
        return save_sample_grid(module, source, self.cfg.sample, path)
