"""A metric for training-time evaluation: do generated waves have their class's frequency?"""

from dataclasses import dataclass

import torch

from carl.metrics import Metric


@dataclass(frozen=True)
class FrequencyConfig:
    per_class: int = 16  # waves generated per class
    num_steps: int = 8


class FrequencyAccuracy(Metric):
    """The share of generated waves whose strongest frequency is their class's (``k + 1``)."""

    Config = FrequencyConfig

    def __init__(self, config: FrequencyConfig):
        self.config = config

    @torch.no_grad()
    def compute(self, model, recipe) -> dict[str, float]:
        classes = recipe.data.options.num_classes
        labels = torch.arange(classes).repeat_interleave(self.config.per_class)
        generator = torch.Generator().manual_seed(0)
        waves = model.generate(labels, num_steps=self.config.num_steps, generator=generator).cpu()  # (B, 1, length)
        strongest = torch.fft.rfft(waves.flatten(1), dim=1).abs()[:, 1:].argmax(dim=1) + 1  # skip the constant term
        return {"frequency_accuracy": (strongest == labels + 1).float().mean().item()}
