"""CRPS (:mod:`carl.scores.crps`): the fair estimator sums the per-dimension closed forms, and the
train temperature weights its diversity term."""

import math

import pytest
import torch

from carl.scores import CRPSScore, SampleScoreConfig, crps

HIDDEN = 4


def test_crps_of_point_masses_is_the_l1_distance():
    x, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    draws = x.expand(3, 1, 3)  # three identical draws: no diversity term
    torch.testing.assert_close(crps(draws, y[None]), torch.tensor([1.0 + 3.0 + 0.0]))


def test_crps_of_a_gaussian_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[-1.0], [0.3], [2.0]])
    draws = 0.5 + 1.5 * torch.randn(2, 400_000, 3, 1, generator=g)
    z = (y[:, 0] - 0.5) / 1.5
    normal = torch.distributions.Normal(0.0, 1.0)
    closed = 1.5 * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))
    torch.testing.assert_close(crps(draws, y).mean(0), closed, atol=0.01, rtol=0)


def test_crps_of_independent_gaussians_is_the_sum_of_their_closed_forms():
    mu, sigma = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 0.5, 1.0])
    y = torch.tensor([[-1.0, 0.0, 2.0], [0.3, -1.0, 4.0]])
    g = torch.Generator().manual_seed(0)
    draws = mu + sigma * torch.randn(2, 400_000, 2, 3, generator=g)  # (M, repeats, targets, D)
    z = (y - mu) / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    closed = sigma * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))
    rule = CRPSScore(SampleScoreConfig(), hidden_dim=HIDDEN, token_dim=3)
    torch.testing.assert_close(rule.score_draws(draws, y).mean(0), closed.sum(-1), atol=0.02, rtol=0)


def test_crps_diversity_is_per_target_and_dimension():
    draws = torch.tensor([[[0.0, 0.0], [1.0, 5.0]], [[2.0, 0.0], [1.0, 1.0]]])  # (M=2, targets=2, D=2)
    y = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    to_target = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # mean |x - y| over the two draws
    diversity = torch.tensor([[2.0, 0.0], [0.0, 4.0]])  # |x1 - x2|
    torch.testing.assert_close(crps(draws, y), (to_target - 0.5 * diversity).sum(-1))


def test_crps_train_temperature_weights_the_diversity_term():
    draws, y = torch.tensor([[[0.0, 1.0]], [[2.0, 4.0]]]), torch.tensor([[1.0, 1.0]])  # (M=2, 1, D=2)
    # to the target: mean(|0-1|, |2-1|) + mean(|1-1|, |4-1|) = 1 + 1.5; diversity: 2 + 3
    assert crps(draws, y, temperature=1.0).item() == pytest.approx(2.5 - 0.5 * 5)
    assert crps(draws, y, temperature=0.5).item() == pytest.approx(2.5 - 0.25 * 5)
