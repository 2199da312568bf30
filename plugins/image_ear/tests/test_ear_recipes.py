"""The paper's recipes build and have the paper's sizes."""

import dataclasses

import pytest
import torch

from carl.config import Component, load_recipe
from carl.model import ContinuousAR

PAPER = {"ear-b-in256": 205_608_720, "ear-l-in256": 474e6, "ear-h-in256": 937e6}  # B: the official checkpoint's count


def build_with_a_small_tokenizer(name: str) -> tuple[ContinuousAR, object]:
    """The recipe's model with KL-16 stubbed by a tiny random autoencoder of the same token shape."""
    cfg = load_recipe(name)
    stub = dataclasses.replace(cfg.model.tokenizer.options, weights=None, ch=32, ch_mult=(1,) * 5, num_res_blocks=1, attn_levels=())
    with torch.device("meta"):  # shapes only: no memory, no time
        model = ContinuousAR(dataclasses.replace(cfg.model, tokenizer=Component("kl16", stub)))
    return model, cfg


@pytest.mark.parametrize("name", PAPER)
def test_parameter_counts_match_the_paper(name):
    model, cfg = build_with_a_small_tokenizer(name)
    assert (model.tokenizer.num_tokens, model.tokenizer.token_dim) == (256, 16)
    count = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("tokenizer."))
    assert abs(count - PAPER[name]) / PAPER[name] < 0.02, count
    if name == "ear-b-in256":
        assert count == PAPER[name]


@pytest.mark.parametrize("name", PAPER)
def test_paper_settings(name):
    cfg = load_recipe(name)
    t, s, score = cfg.train, cfg.sample, cfg.model.score.options
    assert (t.global_batch, t.base_lr, t.warmup_epochs, t.weight_decay, t.grad_clip, t.ema_decay) == (2048, 1e-4, 100, 0.02, 3.0, 0.9999)
    assert (t.head_lr_scale, t.epochs, t.lr_schedule, t.train_temperature) == (0.25, 800, "constant", ((0, 1.0), (750, 0.99)))
    assert cfg.model.backbone.dropout == 0.1 and cfg.model.conditioner.options.buffer == 64
    assert cfg.model.conditioner.options.label_drop == 0.1 and score.batch_mul == 2 and score.alpha == 1.0
    assert (s.temperature, s.cfg, s.cfg_schedule, s.num_steps) == (0.7, 3.0, "linear", 64)
    assert cfg.output == f"runs/{name}"
