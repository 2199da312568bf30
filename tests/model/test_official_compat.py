"""Exact agreement with the official EAR / MAR code where carl claims it: the masked sampler's
schedule and linear CFG scale at every step, MAR's respaced timesteps, and the discretised
Gaussian likelihood of the diffusion loss at t = 0. Each reference below is written from the
official formulas (models/ear.py and models/mar.py ``sample_tokens``; diffusion/respace.py
``space_timesteps``; diffusion/diffusion_utils.py ``discretized_gaussian_log_likelihood``)."""

import math

import numpy as np
import pytest
import torch
from helpers import tiny_model_config

from carl.model import ContinuousAR
from carl.orders.masked import MaskedOrder
from carl.errors import FieldError
from carl.scores.base import guidance_scale
from carl.scores.diffusion import DiffusionScore, DiffusionScoreConfig, discretized_gaussian_log_likelihood, respaced_timesteps

# ---------------------------------------------------------------------------------------------
# References


def official_masked_steps(seq_len: int, num_iter: int, cfg: float) -> list[tuple[int, float]]:
    """(tokens written, cfg_iter) of every step of the official sampler that writes a token.
    As there: the mask length of the *next* step, floor(N cos(pi/2 (step+1)/S)), is held between
    1 and the count still masked minus one, and the linear scale is 1 + (cfg-1)(N - mask_len)/N."""
    masked, steps = seq_len, []
    for step in range(num_iter):
        mask_len = np.floor(seq_len * np.cos(math.pi / 2.0 * (step + 1) / num_iter))
        mask_len = max(1.0, min(masked - 1.0, float(mask_len)))
        written = masked if step >= num_iter - 1 else masked - int(mask_len)
        cfg_iter = 1 + (cfg - 1) * (seq_len - mask_len) / seq_len
        if written:
            steps.append((written, cfg_iter))
        masked = int(mask_len)
    return steps


def official_space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``space_timesteps(num_timesteps, str(count))``: one section, a float stride accumulated."""
    frac_stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur_idx, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur_idx))
        cur_idx += frac_stride
    return sorted(set(taken))


def official_discretized_log_likelihood(x, means, log_scales):
    """In float64 numpy: log P(x's bin of width 2/255) under N(means, exp(log_scales)^2), edge bins open."""
    def cdf(v):
        return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))

    inv = np.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv * (x - means + 1 / 255)), cdf(inv * (x - means - 1 / 255))
    return np.where(x < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
                    np.where(x > 0.999, np.log(np.maximum(1 - cdf_min, 1e-12)), np.log(np.maximum(cdf_plus - cdf_min, 1e-12))))


# ---------------------------------------------------------------------------------------------
# 1. Linear CFG (and the schedule it is read from), every step


@pytest.mark.parametrize("seq_len", [1, 2, 8, 16, 49, 256])
def test_masked_schedule_and_cfg_match_the_official_sampler_at_every_step(seq_len):
    for num_iter in range(1, 81):
        official = official_masked_steps(seq_len, num_iter, cfg=3.0)
        known = MaskedOrder().schedule(seq_len, num_iter)
        assert np.diff([0, *known]).tolist() == [w for w, _ in official], (seq_len, num_iter)
        ours = [guidance_scale(3.0, "linear", k, seq_len) for k in known]
        assert ours == pytest.approx([c for _, c in official], abs=1e-12), (seq_len, num_iter)


def test_the_last_step_stays_below_the_full_scale():
    assert guidance_scale(3.0, "linear", 16, 16) == 2.875  # 1 + 2 * 15 / 16, as the official samplers
    assert guidance_scale(3.0, "constant", 16, 16) == 3.0


@pytest.mark.parametrize("num_steps", [3, 4, 8, 20])
def test_generation_uses_the_official_scale_and_token_count_at_every_step(monkeypatch, num_steps):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))  # 8 tokens
    seen = []
    original = model.score.sample

    def record(hidden, **kw):
        seen.append((hidden.shape[0], kw["guidance"].scale))
        return original(hidden, **kw)

    monkeypatch.setattr(model.score, "sample", record)
    model.generate(torch.tensor([0, 1]), num_steps=num_steps, cfg=3.0, generator=torch.Generator().manual_seed(0))
    assert seen == [(2 * w, pytest.approx(c)) for w, c in official_masked_steps(8, num_steps, cfg=3.0)]


# ---------------------------------------------------------------------------------------------
# 2. Respaced timesteps


def test_respaced_timesteps_equal_mars_space_timesteps_for_every_count():
    for count in range(1, 1001):
        assert respaced_timesteps(1000, count).tolist() == official_space_timesteps(1000, count), count


def test_the_respaced_schedule_uses_those_levels():
    rule = DiffusionScore(DiffusionScoreConfig(sample_steps=7), hidden_dim=4, token_dim=2)
    assert rule.sample_schedule.timesteps.tolist() == official_space_timesteps(1000, 7)
    with pytest.raises(FieldError, match="sample_steps 1 is out of range; allowed: >= 2"):
        DiffusionScoreConfig(sample_steps=1)  # one respaced level is no chain: MAR fails on it, carl refuses it


# ---------------------------------------------------------------------------------------------
# 3. The loss at t = 0: the discretised Gaussian likelihood


def test_discretised_log_likelihood_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 8, generator=g) * 2.2 - 1.1  # beyond [-1, 1] too: the open edge bins
    means = x + 0.02 * torch.randn(64, 8, generator=g)
    log_scales = torch.rand(64, 8, generator=g) * 3 - 4  # away from the far tails, where float32 (as MAR) cancels
    expected = official_discretized_log_likelihood(x.double().numpy(), means.double().numpy(), log_scales.double().numpy())
    ours = discretized_gaussian_log_likelihood(x, means, log_scales)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4, rtol=1e-4)


def test_the_diffusion_loss_at_t0_is_the_discretised_nll_in_bits():
    rule = DiffusionScore(DiffusionScoreConfig(depth=1, width=8), hidden_dim=4, token_dim=3)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(6, 3, generator=g) * 2 - 1, torch.randn(6, 3, generator=g)
    eps, var = torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g) * 2 - 1
    t = torch.zeros(6, dtype=torch.long)
    loss = rule.denoising_loss(lambda xt, t: (eps, var), x0, t, noise)
    s = rule.train_schedule
    mean, log_var = s.p_mean_log_var(s.q_sample(x0, t, noise), t, eps, var)
    nll = -official_discretized_log_likelihood(x0.double().numpy(), mean.double().numpy(), 0.5 * log_var.double().numpy())
    expected = (noise - eps).square().mean(-1).double().numpy() + nll.mean(-1) / math.log(2.0)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
