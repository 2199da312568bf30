"""The log-score heads (:mod:`carl.scores.log_score`): the Gaussian and the mixture against their
densities, temperature scaling sigma and never the mean, and the head's parameters."""

import math

import pytest
import torch

from carl.scores import GaussianScore, GaussianScoreConfig, MixtureScore, MixtureScoreConfig
from carl.scores.log_score import mixture_log_density

HIDDEN = 4


def pin_head(rule, params: torch.Tensor):
    """Make the log-score head output ``params`` for every hidden state (zero weights, bias = params)."""
    with torch.no_grad():
        rule.head.out.weight.zero_()
        rule.head.out.bias.copy_(params)
    return rule


# ---------------------------------------------------------------------------------------------
# Temperature of the log-score heads: it scales sigma, never the mean


def test_gaussian_temperature_scales_sigma_around_the_mean():
    mean, raw = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0]).log()
    rule = pin_head(GaussianScore(GaussianScoreConfig(), hidden_dim=HIDDEN, token_dim=3), torch.cat([mean, raw]))
    std = rule.log_std(raw).exp()  # the head's sigma (bounded smoothly, so not exactly exp(raw))
    hidden = torch.randn(5, HIDDEN)
    for t in (0.0, 0.3, 1.0, 1.7):
        drawn = rule.sample(hidden, temperature=t, generator=torch.Generator().manual_seed(1))
        eps = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(drawn, mean + t * std * eps, rtol=0, atol=1e-5)


def test_gaussian_sample_sigma_replaces_the_models_and_is_scaled_by_temperature():
    mean = torch.tensor([3.0, -2.0])
    config = GaussianScoreConfig(sample_sigma=0.25)
    rule = pin_head(GaussianScore(config, hidden_dim=HIDDEN, token_dim=2), torch.cat([mean, torch.tensor([1.0, 1.0])]))
    drawn = rule.sample(torch.randn(4, HIDDEN), temperature=0.5, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(drawn, mean + 0.5 * 0.25 * eps, rtol=0, atol=1e-5)


def test_gaussian_fixed_sigma_is_the_sampling_sigma():
    mean = torch.tensor([1.0, 2.0])
    rule = pin_head(GaussianScore(GaussianScoreConfig(sigma=0.1), hidden_dim=HIDDEN, token_dim=2), mean)
    drawn = rule.sample(torch.randn(3, HIDDEN), temperature=2.0, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn, mean + 2.0 * 0.1 * eps, rtol=0, atol=1e-5)


def mixture_params(weights, means, stds) -> torch.Tensor:
    """Head outputs of a mixture: logits (K), then means (K x D), then raw log-stds (K x D)."""
    logits = torch.tensor(weights).log()
    return torch.cat([logits, torch.tensor(means).flatten(), torch.tensor(stds).log().flatten()])


def test_mixture_temperature_narrows_each_component_not_the_choice():
    weights, means, stds = [0.25, 0.75], [[-10.0, 5.0], [10.0, -5.0]], [[0.5, 1.0], [2.0, 0.25]]
    rule = MixtureScore(MixtureScoreConfig(components=2), hidden_dim=HIDDEN, token_dim=2)
    params = mixture_params(weights, means, stds)
    pin_head(rule, params)
    stds = rule.split(params[None])[2][0].exp()  # the head's sigmas, (K, D)
    hidden = torch.randn(40_000, HIDDEN)
    for t in (0.0, 0.5):
        drawn = rule.sample(hidden, temperature=t, generator=torch.Generator().manual_seed(4))
        right = drawn[:, 0] > 0  # the components are 20 apart: the side tells which one was drawn
        assert abs(right.float().mean().item() - 0.75) < 0.01  # the choice keeps its weights
        for k, side in enumerate((~right, right)):
            part = drawn[side]
            torch.testing.assert_close(part.mean(0), torch.tensor(means[k]), atol=0.03, rtol=0)
            torch.testing.assert_close(part.std(0), t * stds[k], atol=0.03, rtol=0.03)
    cold = rule.sample(hidden[:10], temperature=0.0, generator=torch.Generator().manual_seed(5))
    assert all(row.tolist() in means for row in cold)  # at t = 0 every draw is a component's mean


def test_mixture_draw_picks_a_component_then_scales_its_sigma():
    weights, means, stds = [0.3, 0.7], [[-1.0, 2.0], [3.0, 0.5]], [[0.5, 1.5], [2.0, 0.25]]
    rule = MixtureScore(MixtureScoreConfig(components=2), hidden_dim=HIDDEN, token_dim=2)
    params = mixture_params(weights, means, stds)
    pin_head(rule, params)
    sigma = rule.split(params[None])[2][0].exp()
    drawn = rule.sample(torch.randn(6, HIDDEN), temperature=0.6, generator=torch.Generator().manual_seed(21))
    g = torch.Generator().manual_seed(21)
    pick = torch.multinomial(torch.tensor(weights).expand(6, 2), 1, generator=g)[:, 0]
    eps = torch.randn(6, 2, generator=g)
    torch.testing.assert_close(drawn, torch.tensor(means)[pick] + 0.6 * sigma[pick] * eps, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Densities and the loss, against closed forms


def test_gaussian_log_score_matches_the_density():
    rule = GaussianScore(GaussianScoreConfig(), hidden_dim=4, token_dim=3)
    params = torch.randn(5, 6)
    y = torch.randn(5, 3)
    mean, log_std = rule.mean_log_std(params)
    expected = -torch.distributions.Normal(mean, log_std.exp()).log_prob(y).sum(-1)
    torch.testing.assert_close(-rule.log_density(params, y), expected)
    fixed = GaussianScore(GaussianScoreConfig(sigma=0.5), hidden_dim=4, token_dim=3)
    mean = torch.randn(5, 3)
    expected = ((y - mean) ** 2 / (2 * 0.25) + math.log(0.5) + 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(-fixed.log_density(mean, y), expected)


def test_log_score_loss_is_the_negative_log_density():
    mean, raw = torch.tensor([0.5, -1.0]), torch.tensor([0.3, -0.2])
    rule = pin_head(GaussianScore(GaussianScoreConfig(), hidden_dim=HIDDEN, token_dim=2), torch.cat([mean, raw]))
    y = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    expected = -torch.distributions.Normal(mean, rule.log_std(raw).exp()).log_prob(y).sum(-1)
    torch.testing.assert_close(rule.loss(torch.randn(2, HIDDEN), y), expected)


def test_one_component_mixture_is_the_gaussian():
    gmm = MixtureScore(MixtureScoreConfig(components=1), hidden_dim=4, token_dim=3)
    gauss = GaussianScore(GaussianScoreConfig(), hidden_dim=4, token_dim=3)
    params, y = torch.randn(5, 7), torch.randn(5, 3)
    torch.testing.assert_close(gmm.log_density(params, y), gauss.log_density(params[:, 1:], y))


def test_mixture_log_density_is_stable_far_from_every_mode():
    y = torch.full((1, 2), 1e3)
    value = mixture_log_density(y, torch.tensor([[-0.1, -2.4]]), torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    assert torch.isfinite(value).all() and value.item() < -1e5


def test_mixture_log_density_keeps_leading_dimensions():
    from carl.scores.log_score import mixture_log_density

    g = torch.Generator().manual_seed(20)
    y, logits = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 5, generator=g)
    mean, log_std = torch.randn(2, 4, 5, 3, generator=g), 0.3 * torch.randn(2, 4, 5, 3, generator=g)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1))
    torch.testing.assert_close(mixture_log_density(y, logits.log_softmax(-1), mean, log_std), reference.log_prob(y))


# ---------------------------------------------------------------------------------------------
# The head and its bounds


def test_bounded_log_std_is_the_identity_between_far_bounds_and_saturates_at_them():
    from carl.scores.log_score import bounded_log_std

    raw = torch.linspace(-2.0, 2.0, 9)
    torch.testing.assert_close(bounded_log_std(raw, 1e-6, 1e6), raw, rtol=0, atol=1e-5)
    ends = bounded_log_std(torch.tensor([-100.0, 100.0]), 1e-3, 10.0)
    torch.testing.assert_close(ends, torch.tensor([math.log(1e-3), math.log(10.0)]), rtol=0, atol=1e-3)


def test_parameter_head_starts_small_but_not_zero():
    rule = MixtureScore(MixtureScoreConfig(), hidden_dim=HIDDEN, token_dim=3)
    weight = rule.head.out.weight  # (K (1 + 2 D), width) = (56, 256): GIVT's N(0, 0.02^2)
    assert 0.018 < weight.std().item() < 0.022 and (rule.head.out.bias == 0).all()


def test_log_score_bounds_must_be_ordered():
    from carl.scores.log_score import LogScoreConfig

    with pytest.raises(ValueError, match=r"^max_std 1.0 must exceed min_std 1.0$") as refused:
        LogScoreConfig(min_std=1.0, max_std=1.0)
    assert refused.value.key == "max_std"
    LogScoreConfig(min_std=1.0, max_std=1.01)
