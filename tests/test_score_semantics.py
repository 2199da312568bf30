"""What each scoring rule's knobs mean, checked against closed forms: temperature, guidance,
sums over token dimensions, kernel bandwidths. Found missing by mutation testing (issue 14)."""

import math

import pytest
import torch

from carl.scores import (
    CRPSScore, DiffusionScore, DiffusionScoreConfig, GaussianScore, GaussianScoreConfig, Guidance, KernelScore,
    KernelScoreConfig, MixtureScore, MixtureScoreConfig, SampleScoreConfig, crps,
)
from carl.scores.log_score import standard_normal

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


# ---------------------------------------------------------------------------------------------
# CRPS sums over the token's dimensions


def test_crps_of_point_masses_is_the_l1_distance():
    x, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    draws = x.expand(3, 1, 3)  # three identical draws: no diversity term
    torch.testing.assert_close(crps(draws, y[None]), torch.tensor([1.0 + 3.0 + 0.0]))


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


def test_crps_train_temperature_weights_the_diversity_term():
    draws, y = torch.tensor([[[0.0, 1.0]], [[2.0, 4.0]]]), torch.tensor([[1.0, 1.0]])  # (M=2, 1, D=2)
    # to the target: mean(|0-1|, |2-1|) + mean(|1-1|, |4-1|) = 1 + 1.5; diversity: 2 + 3
    assert crps(draws, y, temperature=1.0).item() == pytest.approx(2.5 - 0.5 * 5)
    assert crps(draws, y, temperature=0.5).item() == pytest.approx(2.5 - 0.25 * 5)


# ---------------------------------------------------------------------------------------------
# Kernel scores: the documented kernels, exactly


def kernel_rule(kernel: str, **options) -> KernelScore:
    return KernelScore(KernelScoreConfig(kernel=kernel, **options), hidden_dim=HIDDEN, token_dim=2)


@pytest.mark.parametrize(
    "kernel,options,expected",
    [
        ("gaussian", {"bandwidth": 2.0}, math.exp(-25 / (2 * 4))),  # exp(-|x-y|^2 / 2h^2), |x-y| = 5
        ("gaussian", {"bandwidth": 0.5}, math.exp(-25 / (2 * 0.25))),
        ("laplacian", {"bandwidth": 2.0}, math.exp(-5 / 2)),  # exp(-|x-y| / h)
        ("energy", {"alpha": 1.5}, -(5**1.5)),  # -|x-y|^a
        ("linear", {}, 1 * 4 + 2 * 6),  # x . y
    ],
)
def test_kernels_match_their_formulas(kernel, options, expected):
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 6.0]])
    value = kernel_rule(kernel, **options).kernel(x, y)
    torch.testing.assert_close(value, torch.tensor([expected], dtype=torch.float32), rtol=1e-6, atol=0)


def test_kernel_score_of_point_masses_is_half_the_squared_mmd():
    rule = kernel_rule("gaussian", bandwidth=2.0)
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([[4.0, 6.0]])
    draws = x.expand(3, 1, 2)
    k_xy = math.exp(-25 / 8)
    # 1/2 k(x, x) - k(x, y) + 1/2 k(y, y) = 1 - k(x, y)
    torch.testing.assert_close(rule.score_draws(draws, y), torch.tensor([1.0 - k_xy]))
    rule.set_train_temperature(0.5)  # the temperature weights the draws' similarity term only
    torch.testing.assert_close(rule.score_draws(draws, y), torch.tensor([0.25 - k_xy + 0.5]))


# ---------------------------------------------------------------------------------------------
# Diffusion guidance: noise prediction mixed, variance from the conditional half


class ScriptedDenoiser(torch.nn.Module):
    """A stand-in for MAR's denoiser that reads its outputs off the hidden state: the first D
    values are the predicted noise, the next D the variance logits (no level dependence)."""

    def __init__(self, token_dim: int):
        super().__init__()
        self.cond_embed = torch.nn.Identity()
        self.input_proj = torch.nn.Linear(token_dim, 1)  # sample() reads the token size from it
        self.token_dim = token_dim

    def time_embed(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(t), 2 * self.token_dim)  # one row per level asked for (the sampler embeds them all at once)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y[:, : self.token_dim].expand_as(x), y[:, self.token_dim :].expand_as(x)


def test_diffusion_guidance_mixes_the_noise_and_keeps_the_conditional_variance():
    d, scale = 2, 3.0
    rule = DiffusionScore(DiffusionScoreConfig(sample_steps=6, clip_x0=4.0), hidden_dim=2 * d, token_dim=d)
    rule.net = ScriptedDenoiser(d)
    rows = 5
    cond_eps, uncond_eps = torch.tensor([0.3, -0.2]), torch.tensor([-0.1, 0.4])
    cond = torch.cat([cond_eps, torch.tensor([1.0, 1.0])]).expand(rows, -1)  # variance logits +1: beta
    uncond = torch.cat([uncond_eps, torch.tensor([-1.0, -1.0])]).expand(rows, -1)  # -1: posterior variance
    guided = rule.sample(cond, temperature=0.8, guidance=Guidance(uncond, scale), generator=torch.Generator().manual_seed(0))

    def reference(x, level):  # MAR: eps_u + s (eps_c - eps_u), the conditional half's variance
        eps = uncond_eps + scale * (cond_eps - uncond_eps)
        return eps.expand_as(x), torch.ones_like(x)

    g = torch.Generator().manual_seed(0)
    start = standard_normal((rows, d), cond, g)
    expected = rule.reverse(reference, start, temperature=0.8, generator=g)
    torch.testing.assert_close(guided, expected, rtol=0, atol=1e-5)
    assert guided.abs().max() < 10  # values where a wrong variance cannot hide behind rtol

    def wrong_variance(x, level):
        return reference(x, level)[0], -torch.ones_like(x)

    g = torch.Generator().manual_seed(0)
    other = rule.reverse(wrong_variance, standard_normal((rows, d), cond, g), temperature=0.8, generator=g)
    assert (guided - other).abs().max() > 0.05  # guard: the variance matters at these values


# ---------------------------------------------------------------------------------------------
# Defaults and refusals (mutation survivors)


@pytest.mark.parametrize("name", ["energy", "crps", "kernel", "gaussian", "gmm", "diffusion"])
def test_default_sampling_temperature_is_one(name):
    from carl.plugins import registry

    cls = registry("scores").get(name)
    rule = cls(cls.Config(**({"sample_steps": 5} if name == "diffusion" else {})), hidden_dim=HIDDEN, token_dim=2)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    hidden = torch.randn(4, HIDDEN)
    default = rule.sample(hidden, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(default, rule.sample(hidden, temperature=1.0, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(default, rule.sample(hidden, temperature=0.5, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "options,message",
    [
        ({"num_samples": 1}, "num_samples 1 is out of range; allowed: >= 2"),
        ({"batch_mul": 0}, "batch_mul 0 is out of range; allowed: >= 1"),
        ({"depth": 0}, "depth 0 is out of range; allowed: >= 1"),
    ],
)
def test_sample_score_config_refusals(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        SampleScoreConfig(**options)
    SampleScoreConfig(num_samples=2, batch_mul=1, depth=1)  # the smallest valid values


# ---------------------------------------------------------------------------------------------
# The diffusion loss's building blocks against closed forms (mutation survivors)


def test_normal_kl_matches_torch_distributions():
    from carl.scores.diffusion import normal_kl

    mean1, log_var1 = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.5, -0.7, 0.0])
    mean2, log_var2 = torch.tensor([-0.2, 0.4, 2.0]), torch.tensor([-0.3, 0.2, 1.1])
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean1, (0.5 * log_var1).exp()),
                                                 torch.distributions.Normal(mean2, (0.5 * log_var2).exp()))
    torch.testing.assert_close(normal_kl(mean1, log_var1, mean2, log_var2), expected)


def test_discretized_gaussian_likelihood_is_the_mass_of_the_bin():
    from carl.scores.diffusion import discretized_gaussian_log_likelihood

    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0])
    mean, log_scale = torch.tensor([-0.9, -0.45, 0.1, 0.3, 0.8]), torch.tensor([-1.0, -2.0, -1.5, -3.0, -1.0])
    normal = torch.distributions.Normal(mean, log_scale.exp())
    below, above = normal.cdf(x + 1 / 255), normal.cdf(x - 1 / 255)
    expected = torch.cat([below[:1].log(), (below - above)[1:4].log(), (1 - above[4:]).log()])  # edge bins are open
    # ADM's tanh approximation of the normal CDF is good to ~1e-4 in probability
    torch.testing.assert_close(discretized_gaussian_log_likelihood(x, mean, log_scale), expected, rtol=0, atol=5e-3)


def test_linear_betas_are_float64_and_ho_et_al():
    from carl.scores.diffusion import betas_for

    betas = betas_for("linear", 1000)
    assert betas.dtype == torch.float64  # the tables are products over 1000 steps: float32 would drift
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(betas_for("linear", 250), torch.linspace(4e-4, 0.08, 250, dtype=torch.float64), rtol=1e-15, atol=0)


def test_diffusion_state_holds_only_mar_weights():
    """The schedule tables are derived, not saved: a checkpoint has MAR's ``diffloss`` keys only."""
    rule = DiffusionScore(DiffusionScoreConfig(depth=1, width=8), hidden_dim=HIDDEN, token_dim=2)
    keys = set(rule.state_dict())
    assert keys and all(key.startswith("net.") for key in keys), sorted(keys)
    assert not any("freqs" in key for key in keys)


def test_diffusion_sample_steps_beyond_train_steps_names_the_field():
    with pytest.raises(ValueError, match=r"^sample_steps 2000 exceeds train_steps 1000$"):
        DiffusionScoreConfig(train_steps=1000, sample_steps=2000)


def test_generator_noise_follows_the_like_tensor_not_the_generator():
    """A CPU generator may seed a model on another device: the noise goes where ``like`` lives."""
    from carl.scores.generator import draw_noise

    like = torch.empty(0, device="meta", dtype=torch.float16)
    noise = draw_noise(5, 3, "uniform", like, torch.Generator().manual_seed(0))
    assert noise.device.type == "meta" and noise.dtype == torch.float16 and noise.shape == (5, 3)
