import math
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from carl.scores import EnergyScore, EnergyScoreConfig, energy_score
from carl.scores.base import Guidance


def crps_gaussian(mu: float, sigma: float, y: torch.Tensor) -> torch.Tensor:
    """Closed-form CRPS of N(mu, sigma^2) = energy score with alpha = 1 in one dimension."""
    z = (y - mu) / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    return sigma * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))


@pytest.mark.parametrize("m", [2, 3, 8])
def test_fair_estimator_is_unbiased(m):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[-1.0], [0.3], [2.0]])
    draws = 0.5 + 1.5 * torch.randn(m, 200_000, 3, 1, generator=g)  # (M, repeats, targets, D)
    estimate = energy_score(draws, y, alpha=1.0).mean(0)
    torch.testing.assert_close(estimate, crps_gaussian(0.5, 1.5, y[:, 0]), atol=0.01, rtol=0)


def test_plain_average_over_m_squared_would_be_biased():
    # Guards the test above: dividing the diversity term by M^2 instead of M(M-1) is visibly off.
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[0.0]])
    draws = torch.randn(2, 200_000, 1, 1, generator=g)
    fair = energy_score(draws, y, alpha=1.0).mean()
    plain = fair + 0.5 * 0.5 * (draws[0] - draws[1]).abs().mean()  # what a M^2 divisor would give
    exact = crps_gaussian(0.0, 1.0, y[0, 0])
    assert abs(fair - exact) < 0.01 < abs(plain - exact)


def expected_scores(alpha: float, forecasts: dict[str, tuple[float, float]], n: int = 100_000) -> dict[str, float]:
    """E_y ES(Q, y) for y ~ N(0, I_2) and Gaussian forecasts Q = N(shift, scale^2 I), common random numbers."""
    g = torch.Generator().manual_seed(1)
    y = torch.randn(n, 2, generator=g)
    base = torch.randn(4, n, 2, generator=g)
    return {
        name: energy_score(shift + scale * base, y, alpha).mean().item() for name, (shift, scale) in forecasts.items()
    }


FORECASTS = {"true": (0.0, 1.0), "shifted": (0.4, 1.0), "wide": (0.0, 1.6), "narrow": (0.0, 0.6)}


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5])
def test_true_distribution_scores_best(alpha):
    scores = expected_scores(alpha, FORECASTS)
    for name in ("shifted", "wide", "narrow"):
        assert scores["true"] < scores[name] - 0.005, (name, scores)


def test_alpha_two_cannot_see_the_spread():
    scores = expected_scores(2.0, FORECASTS)
    assert abs(scores["wide"] - scores["true"]) < 0.02 and abs(scores["narrow"] - scores["true"]) < 0.02
    assert scores["shifted"] > scores["true"] + 0.1
    at_one = expected_scores(1.0, FORECASTS)
    assert at_one["wide"] - at_one["true"] > 0.02  # alpha = 1 does see it


def test_true_mixture_beats_its_mean_and_a_dropped_mode():
    g = torch.Generator().manual_seed(2)
    n = 50_000

    def mixture(k):
        sign = torch.where(torch.rand(k, n, 1, generator=g) < 0.5, -1.0, 1.0)
        return sign * torch.tensor([2.0, 0.0]) + 0.3 * torch.randn(k, n, 2, generator=g)

    y = mixture(1)[0]
    true = energy_score(mixture(4), y, 1.0).mean()
    collapsed = energy_score(0.3 * torch.randn(4, n, 2, generator=g), y, 1.0).mean()  # the conditional mean
    one_mode = energy_score(torch.tensor([2.0, 0.0]) + 0.3 * torch.randn(4, n, 2, generator=g), y, 1.0).mean()
    assert true < collapsed - 0.1 and true < one_mode - 0.1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-5, 5), m=st.integers(2, 6))
def test_invariances(seed, shift, m):
    g = torch.Generator().manual_seed(seed)
    draws, y = torch.randn(m, 5, 3, generator=g), torch.randn(5, 3, generator=g)
    score = energy_score(draws, y, 1.3)
    torch.testing.assert_close(energy_score(draws[torch.randperm(m, generator=g)], y, 1.3), score)
    torch.testing.assert_close(energy_score(draws + shift, y + shift, 1.3), score, atol=1e-4, rtol=1e-4)


def test_point_masses_closed_form():
    draws = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]]])  # two draws, |x1 - x2| = 5
    y = torch.tensor([[0.0, 0.0]])
    # 1/2 (0 + 5) - 1/2 * 5 = 0 at alpha 1; at alpha 0.5: 1/2 sqrt(5) - 1/2 sqrt(5) = 0; off-centre y:
    assert energy_score(draws, y, 1.0).item() == pytest.approx(0.0)
    y = torch.tensor([[3.0, 0.0]])
    assert energy_score(draws, y, 1.0).item() == pytest.approx(0.5 * (3 + 4) - 0.5 * 5)


def test_alpha_bounds():
    with pytest.raises(ValueError, match="alpha"):
        EnergyScoreConfig(alpha=2.5)
    with pytest.raises(ValueError, match="alpha"):
        EnergyScoreConfig(alpha=0.0)
    with pytest.warns(UserWarning, match="not strictly proper"):
        score = EnergyScore(EnergyScoreConfig(alpha=2.0, width=8, depth=1, noise_dim=4), hidden_dim=4, token_dim=2)
    assert not score.strictly_proper


def make_score(**overrides) -> EnergyScore:
    torch.manual_seed(0)
    score = EnergyScore(EnergyScoreConfig(width=16, depth=2, noise_dim=4, **overrides), hidden_dim=8, token_dim=3)
    for p in score.parameters():  # leave the zero init, so outputs depend on the inputs
        torch.nn.init.normal_(p, std=0.3)
    return score


def test_loss_matches_ear_form_and_reaches_hidden_state():
    score = make_score(batch_mul=1, train_temperature=0.9)
    hidden = torch.randn(5, 8, requires_grad=True)
    target = torch.randn(5, 3)
    torch.manual_seed(3)
    loss = score.loss(hidden, target)
    torch.manual_seed(3)
    noise = torch.rand(10, 4) - 0.5
    x1, x2 = score.net(hidden.repeat(2, 1), noise).chunk(2)
    ear = (x1 - target).norm(dim=-1) + (x2 - target).norm(dim=-1) - 0.9 * (x1 - x2).norm(dim=-1)
    torch.testing.assert_close(loss, ear)
    loss.sum().backward()
    assert hidden.grad.abs().sum() > 0 and all(p.grad is not None for p in score.parameters())


def test_sampling_reproducible_and_guidance_scale_one_is_none():
    score = make_score()
    h, u = torch.randn(6, 8), torch.randn(6, 8)
    a = score.sample(h, generator=torch.Generator().manual_seed(1))
    b = score.sample(h, generator=torch.Generator().manual_seed(1))
    c = score.sample(h, guidance=Guidance(u, 1.0), generator=torch.Generator().manual_seed(1))
    d = score.sample(h, guidance=Guidance(u, 3.0), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, d)


def test_temperature_scales_only_the_block_shift():
    score = make_score()
    h, noise = torch.randn(4, 8), torch.rand(4, 4) - 0.5
    out = score.net(h, noise, shift_scale=0.0)
    for block in score.net.res_blocks:  # zero the shift rows: the same as temperature 0
        block.adaLN_modulation[-1].weight.data[:16] = 0
        block.adaLN_modulation[-1].bias.data[:16] = 0
    torch.testing.assert_close(score.net(h, noise, shift_scale=1.0), out)


def test_gaussian_noise_option():
    score = make_score(noise="gaussian")
    assert score.sample(torch.randn(3, 8)).shape == (3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_score(alpha=1.99)


def test_alpha_two_warning_names_the_caller():
    import carl.scores.energy as energy_module

    with pytest.warns(UserWarning, match=r"^energy score with alpha = 2 is proper but not strictly proper: it only matches the mean$") as caught:
        EnergyScore(EnergyScoreConfig(alpha=2.0, width=8, depth=1, noise_dim=4), hidden_dim=4, token_dim=2)
    assert caught[0].filename != energy_module.__file__  # stacklevel: the code that built the rule, not carl's warn call


def test_energy_score_of_point_masses_is_the_distance():
    x, y = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    draws = x.expand(4, 1, 3)
    for alpha in (0.5, 1.0, 1.5):
        torch.testing.assert_close(energy_score(draws, y[None], alpha), torch.tensor([3.0**alpha]))
