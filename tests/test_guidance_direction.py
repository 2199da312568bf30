"""Classifier-free guidance points towards the condition: a spy on the scoring rule's sampler
sees the conditional hidden states as ``hidden`` and the unconditional ones as ``guidance.uncond``."""

import pytest
import torch

from carl.model import generation
from carl.model import ContinuousAR

from helpers import tiny_model_config


def spy_on_sampler(model, monkeypatch) -> list[tuple[torch.Tensor, object]]:
    calls = []
    original = model.score.sample

    def spy(hidden, **kw):
        calls.append((hidden.clone(), kw["guidance"]))
        return original(hidden, **kw)

    monkeypatch.setattr(model.score, "sample", spy)
    return calls


def test_sample_gives_the_first_half_as_condition_and_the_second_as_unconditional(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    calls = spy_on_sampler(model, monkeypatch)
    cond, uncond = torch.randn(3, 16), torch.randn(3, 16)
    generation.sample_step(model, torch.cat([cond, uncond]), 4, cfg=3.0, cfg_schedule="constant", temperature=1.0, generator=None)
    (hidden, guidance), = calls
    assert torch.equal(hidden, cond) and torch.equal(guidance.uncond, uncond) and guidance.scale == 3.0
    calls.clear()
    generation.sample_step(model, cond, 4, cfg=1.0, cfg_schedule="constant", temperature=1.0, generator=None)
    assert torch.equal(calls[0][0], cond) and calls[0][1] is None  # no guidance: all rows are conditional


def test_causal_generation_guides_with_the_labels_against_the_null_class(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("causal")).eval()
    calls = spy_on_sampler(model, monkeypatch)
    labels = torch.tensor([1, 3])
    model.generate(labels, cfg=2.0, generator=torch.Generator().manual_seed(0))
    order, tokens = torch.arange(8).expand(2, 8), torch.zeros(2, 8, 2)
    with torch.no_grad():  # the first token's hidden state depends on the condition alone
        want_cond = model.hidden_causal(tokens, model.conditioner(labels, 2), order)[:, 0]
        want_uncond = model.hidden_causal(tokens, model.conditioner(None, 2), order)[:, 0]
    hidden, guidance = calls[0]
    torch.testing.assert_close(hidden, want_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.uncond, want_uncond, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want_cond, want_uncond, atol=1e-3)  # guard: the two halves differ


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_masked_generation_guides_with_the_labels_against_the_null_class(monkeypatch, encoder_depth):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked", encoder_depth=encoder_depth)).eval()
    calls = spy_on_sampler(model, monkeypatch)
    label = torch.tensor([2])
    model.generate(label, num_steps=8, cfg=2.0, generator=torch.Generator().manual_seed(0))  # one token per step
    tokens, unknown = torch.zeros(1, 8, 2), torch.zeros(1, 8, dtype=torch.bool)
    with torch.no_grad():  # first step: nothing known, every position's hidden state depends on the condition
        want_cond = model.hidden_bidirectional(tokens, model.conditioner(label, 1), unknown)[0]  # (N, C)
        want_uncond = model.hidden_bidirectional(tokens, model.conditioner(None, 1), unknown)[0]
    hidden, guidance = calls[0]
    position = (want_cond - hidden).abs().sum(-1).argmin()  # the position the order wrote first
    torch.testing.assert_close(hidden[0], want_cond[position], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.uncond[0], want_uncond[position], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want_cond[position], want_uncond[position], atol=1e-3)
