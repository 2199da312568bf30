"""Tiny models of the shipped tiny recipe: causal (as shipped) and masked."""

import pytest
import torch

from carl.config import load_recipe
from carl.model import ContinuousAR


@pytest.fixture
def model() -> ContinuousAR:
    torch.manual_seed(0)
    return ContinuousAR(load_recipe("tiny").model)


@pytest.fixture
def masked() -> ContinuousAR:
    torch.manual_seed(0)
    return ContinuousAR(load_recipe("tiny", ["model.order=masked"]).model)
