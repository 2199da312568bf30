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


# ---------------------------------------------------------------------------------------------
# The AdaLN MLPs are EAR's and MAR's SimpleMLPAdaLN, recomputed here from the parameter names


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Replace every weight (zero-initialised ones included) by N(0, std^2) draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))
    return module


def params_under(p: dict[str, torch.Tensor] | torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A module's parameters (or those of a name dict) whose names start with ``prefix``, without it."""
    p = dict(p.named_parameters()) if isinstance(p, torch.nn.Module) else p
    return {name[len(prefix):]: value for name, value in p.items() if name.startswith(prefix)}


def linear(p, name, x):
    return torch.nn.functional.linear(x, p[f"{name}.weight"], p[f"{name}.bias"])


def res_block_reference(p, x, y, shift_scale=1.0):
    """EAR/MAR ``ResBlock``: ``x + gate * mlp(LN(x) (1 + scale) + shift)``, (shift, scale, gate) = linear(SiLU(y)),
    LayerNorm eps 1e-6; EAR's temperature multiplies the shift."""
    shift, scale, gate = linear(p, "adaLN_modulation.1", torch.nn.functional.silu(y)).chunk(3, -1)
    h = torch.nn.functional.layer_norm(x, x.shape[-1:], p["in_ln.weight"], p["in_ln.bias"], eps=1e-6)
    h = linear(p, "mlp.2", torch.nn.functional.silu(linear(p, "mlp.0", h * (1 + scale) + shift_scale * shift)))
    return x + gate * h


def final_layer_reference(p, x, y):
    """EAR/MAR ``FinalLayer``: ``linear(LN(x) (1 + scale) + shift)``, LayerNorm without affine, eps 1e-6."""
    shift, scale = linear(p, "adaLN_modulation.1", torch.nn.functional.silu(y)).chunk(2, -1)
    return linear(p, "linear", torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift)


def adaln_body_reference(p, x, y, depth, shift_scale=1.0):
    """``depth`` residual blocks, then the final layer, from the parameters ``p`` named as in EAR and MAR."""
    for i in range(depth):
        x = res_block_reference(params_under(p, f"res_blocks.{i}."), x, y, shift_scale)
    return final_layer_reference(params_under(p, "final_layer."), x, y)


def test_res_block_and_final_layer_are_ears():
    from carl.scores.generator import FinalLayer, ResBlock

    g = torch.Generator().manual_seed(1)
    x = 1e-3 * torch.randn(5, 8, generator=g)  # a spread of ~1e-3: LayerNorm's eps (1e-6 in EAR) shows
    y = torch.randn(5, 8, generator=g)
    block = randomize(ResBlock(8))
    with torch.no_grad():
        for shift_scale in (1.0, 0.4):
            torch.testing.assert_close(block(x, y, shift_scale), res_block_reference(params_under(block), x, y, shift_scale))
        final = randomize(FinalLayer(8, 3))
        torch.testing.assert_close(final(x, y), final_layer_reference(params_under(final), x, y))


def test_generator_is_ears_simple_mlp_adaln():
    from carl.scores.generator import MLPGenerator

    net = randomize(MLPGenerator(hidden_dim=4, width=8, depth=2, token_dim=3, noise_dim=5))
    g = torch.Generator().manual_seed(2)
    hidden, noise = torch.randn(3, 4, generator=g), torch.rand(6, 5, generator=g) - 0.5  # two draws per hidden state
    p = params_under(net)
    x = linear(p, "input_proj", hidden).repeat(2, 1)  # row k T + t draws from hidden[t]
    y = linear(p, "noise_embed", noise)
    with torch.no_grad():
        torch.testing.assert_close(net(hidden, noise), adaln_body_reference(p, x, y, depth=2))  # default: no temperature
        torch.testing.assert_close(net(hidden, noise, 0.3), adaln_body_reference(p, x, y, depth=2, shift_scale=0.3))


def test_generator_refuses_noise_rows_that_do_not_split_over_the_hidden_states():
    from carl.scores.generator import MLPGenerator

    net = MLPGenerator(hidden_dim=4, width=8, depth=1, token_dim=3, noise_dim=5)
    with pytest.raises(ValueError, match=r"^7 noise rows are not a multiple of 3 hidden states$"):
        net(torch.randn(3, 4), torch.randn(7, 5))


def mar_timestep_features(t: torch.Tensor) -> torch.Tensor:
    """MAR's sinusoidal level features: cos then sin of ``t * 10000^(-i / 128)``, i < 128 (float64)."""
    freqs = torch.exp(-math.log(10_000) * torch.arange(128, dtype=torch.float64) / 128)
    args = t.double()[:, None] * freqs
    return torch.cat([args.cos(), args.sin()], -1)


def test_timestep_features_are_mars_sinusoids():
    from carl.scores.diffusion import TimestepEmbedder

    embedder = TimestepEmbedder(8)
    embedder.mlp = torch.nn.Identity()  # the raw features
    t = torch.tensor([0, 1, 17, 999])
    features = embedder(t)
    torch.testing.assert_close(features.double(), mar_timestep_features(t), rtol=0, atol=5e-4)
    torch.testing.assert_close(embedder(t[:, None]), features[:, None])  # each level on its own


def test_timestep_frequencies_do_not_follow_the_default_dtype():
    """MAR computes the frequencies in float32: the same level embedding whatever torch's default dtype."""
    from carl.scores.diffusion import TimestepEmbedder

    reference = TimestepEmbedder(8).freqs
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        freqs = TimestepEmbedder(8).freqs
    finally:
        torch.set_default_dtype(previous)
    assert freqs.dtype == torch.float32
    torch.testing.assert_close(freqs, reference, rtol=0, atol=0)


def test_denoiser_is_mars_simple_mlp_adaln():
    from carl.scores.diffusion import MLPDenoiser

    net = randomize(MLPDenoiser(hidden_dim=4, width=8, depth=2, token_dim=3), std=0.1)
    g = torch.Generator().manual_seed(3)
    x, hidden, t = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g), torch.tensor([0, 3, 250, 998, 999])
    p = params_under(net)
    time = linear(p, "time_embed.mlp.2", torch.nn.functional.silu(linear(p, "time_embed.mlp.0", mar_timestep_features(t).float())))
    y = time + linear(p, "cond_embed", hidden)  # MAR: c = t_emb + c_emb
    out = adaln_body_reference(p, linear(p, "input_proj", x), y, depth=2)
    with torch.no_grad():
        eps, var_logits = net(x, net.condition(hidden, t))
    torch.testing.assert_close(eps, out[:, :3], rtol=1e-4, atol=1e-5)  # noise first, then variance logits (MAR's split)
    torch.testing.assert_close(var_logits, out[:, 3:], rtol=1e-4, atol=1e-5)


def test_adaln_modules_work_token_wise_over_leading_dimensions():
    from carl.scores.diffusion import MLPDenoiser
    from carl.scores.generator import FinalLayer, ResBlock

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    flat = (x.reshape(6, 8), y.reshape(6, 8))
    with torch.no_grad():
        block, final = randomize(ResBlock(8)), randomize(FinalLayer(8, 4))
        torch.testing.assert_close(block(x, y, 1.0), block(*flat, 1.0).reshape(2, 3, 8))
        torch.testing.assert_close(final(x, y), final(*flat).reshape(2, 3, 4))
        net = randomize(MLPDenoiser(hidden_dim=4, width=8, depth=1, token_dim=2))
        tokens = torch.randn(2, 3, 2, generator=g)
        for batched, rows in zip(net(tokens, y), net(tokens.reshape(6, 2), flat[1])):
            torch.testing.assert_close(batched, rows.reshape(2, 3, 2))


# ---------------------------------------------------------------------------------------------
# The diffusion schedule and reverse step against closed forms (mutation survivors)


def test_cosine_betas_are_nichol_and_dhariwal():
    from carl.scores.diffusion import betas_for

    steps, s = 20, 0.008

    def f(i):
        return math.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2

    expected = [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)]
    assert expected[-1] == 0.999  # alpha_bar reaches 0 at the end: the cap acts
    torch.testing.assert_close(betas_for("cosine", steps), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_respaced_timesteps_at_the_edges():
    from carl.scores.diffusion import respaced_timesteps

    assert respaced_timesteps(1000, 1).tolist() == [0]  # one step keeps level 0
    assert respaced_timesteps(1000, 2).tolist() == [0, 999]  # first and last
    assert respaced_timesteps(10, 4).tolist() == [0, 3, 6, 9]


def bayes_posterior(alpha_bar: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor):
    """Mean and variance of x_(t-1) | x_t, x_0 by Gaussian conditioning, from float64 ``alpha_bar`` of the
    kept levels: x_(t-1) | x_0 ~ N(sqrt(abar') x_0, 1 - abar'), x_t | x_(t-1) ~ N(sqrt(a) x_(t-1), 1 - a),
    a = abar / abar'. Needs t >= 1."""
    bar, prev = alpha_bar[t][:, None], alpha_bar[t - 1][:, None]
    a = bar / prev
    precision = 1 / (1 - prev) + a / (1 - a)
    mean = (prev.sqrt() * x0.double() / (1 - prev) + a.sqrt() * xt.double() / (1 - a)) / precision
    return mean, 1 / precision


@pytest.mark.parametrize("kept", [None, 7])
def test_posterior_is_gaussian_conditioning(kept):
    from carl.scores.diffusion import NoiseSchedule, betas_for, respaced_timesteps

    betas = betas_for("cosine", 50)
    levels = None if kept is None else respaced_timesteps(50, kept)
    schedule = NoiseSchedule(betas, levels)
    alpha_bar = torch.cumprod(1 - betas, 0)[levels if levels is not None else slice(None)]
    g = torch.Generator().manual_seed(5)
    x0, xt = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    t = torch.tensor([1, 3, len(schedule) - 2])
    mean, var = bayes_posterior(alpha_bar, t, x0, xt)
    torch.testing.assert_close(schedule.posterior(x0, xt, t).double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(schedule.posterior_log_var[t].double(), var[:, 0].log(), rtol=1e-5, atol=1e-6)
    if kept is None:  # the first level of the training chain: x_(-1) is x_0 itself
        torch.testing.assert_close(schedule.posterior(x0, xt, torch.zeros(3, dtype=torch.long)), x0)


def test_model_reverse_step_recovers_x0_from_the_true_noise_and_interpolates_the_variance():
    from carl.scores.diffusion import NoiseSchedule, betas_for

    betas = betas_for("cosine", 50)
    schedule = NoiseSchedule(betas)
    g = torch.Generator().manual_seed(6)
    x0 = torch.tensor([[-2.0, -0.3, 0.2], [0.9, -0.7, 1.5], [0.1, 0.4, -0.45], [-1.2, 0.0, 0.8]])
    noise = torch.randn(4, 3, generator=g)
    t = torch.tensor([1, 5, 20, 40])
    xt = schedule.q_sample(x0, t, noise)
    v = torch.zeros(4, 3)
    mean, _ = schedule.p_mean_log_var(xt, t, noise, v)  # the true noise gives the true x0
    torch.testing.assert_close(mean, schedule.posterior(x0, xt, t), rtol=1e-4, atol=1e-4)
    mean, _ = schedule.p_mean_log_var(xt, t, noise, v, clip_x0=0.5)  # clip the predicted x0 to [-0.5, 0.5]
    torch.testing.assert_close(mean, schedule.posterior(x0.clamp(-0.5, 0.5), xt, t), rtol=1e-4, atol=1e-4)
    # v = +1: beta's log-variance, -1: the posterior's, between: linear in log space (Nichol & Dhariwal)
    log_beta = betas[t].log()[:, None]
    log_post = bayes_posterior(torch.cumprod(1 - betas, 0), t, x0, xt)[1].log()
    for value, expected in ((1.0, log_beta), (-1.0, log_post), (0.0, (log_beta + log_post) / 2),
                            (0.5, 0.75 * log_beta + 0.25 * log_post)):
        log_var = schedule.p_mean_log_var(xt, t, noise, torch.full((4, 3), value))[1]
        torch.testing.assert_close(log_var.double(), expected.expand(4, 3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_reverse_is_adms_sampling_loop(clip):
    """The host-side coefficients of each step reproduce the table-based reverse step: mean from the
    predicted noise, std exp(log_var / 2) times the temperature, no noise at the last step; the
    denoiser gets each step's training level as an index into the training tables."""
    rule = DiffusionScore(DiffusionScoreConfig(depth=1, width=8, train_steps=100, sample_steps=5, clip_x0=clip),
                          hidden_dim=HIDDEN, token_dim=2)
    schedule = rule.sample_schedule

    def denoiser(x, level):
        scale = rule.train_schedule.sqrt_alpha_bar[level]  # levels index the training tables
        return 0.3 * x + 0.1 * scale, torch.tanh(x)

    start = torch.randn(6, 2, generator=torch.Generator().manual_seed(7))
    drawn = rule.reverse(denoiser, start, temperature=0.7, generator=torch.Generator().manual_seed(8))
    g, x = torch.Generator().manual_seed(8), start
    for i in reversed(range(len(schedule))):
        eps, v = denoiser(x, schedule.timesteps[i : i + 1])
        mean, log_var = schedule.p_mean_log_var(x, torch.full((6,), i), eps, v, clip_x0=clip)
        x = mean + 0.7 * (0.5 * log_var).exp() * torch.randn(x.shape, generator=g) if i > 0 else mean
    torch.testing.assert_close(drawn, x, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The diffusion loss: MSE of the noise plus the variance bound in bits, per token (mutation survivors)


def small_diffusion(**options) -> DiffusionScore:
    options = {"depth": 1, "width": 8, "train_steps": 50, "sample_steps": 5, **options}
    return DiffusionScore(DiffusionScoreConfig(**options), hidden_dim=HIDDEN, token_dim=3)


def test_denoising_loss_is_the_noise_mse_plus_the_variance_bound_in_bits():
    from carl.scores.diffusion import discretized_gaussian_log_likelihood

    rule = small_diffusion()
    schedule = rule.train_schedule
    g = torch.Generator().manual_seed(9)
    x0 = 0.8 * torch.rand(5, 3, generator=g) - 0.4
    t = torch.tensor([0, 0, 1, 10, 30])  # level 0 scores the decoder likelihood, the others a KL
    noise = torch.randn(5, 3, generator=g)
    error = torch.tensor([[0.5, -0.2, 0.1], [1.0, 0.3, -0.6], [0.2, 0.2, 0.2], [-0.4, 0.0, 0.9], [0.1, -0.3, 0.0]])
    v = torch.tensor([[0.3, -0.5, 0.9], [-0.2, 0.1, 0.6], [0.5, 0.5, -0.8], [0.0, -0.9, 0.4], [0.7, 0.2, -0.1]])

    def denoiser(xt, level):
        return noise + error, v

    loss = rule.denoising_loss(denoiser, x0, t, noise)
    xt = schedule.q_sample(x0, t, noise)
    mean, log_var = schedule.p_mean_log_var(xt, t, noise + error, v)
    truth = torch.distributions.Normal(schedule.posterior(x0, xt, t), schedule.at("posterior_log_var", t).mul(0.5).exp())
    kl = torch.distributions.kl_divergence(truth, torch.distributions.Normal(mean, log_var.mul(0.5).exp())).mean(-1)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(-1)
    mse = error.square().mean(-1)
    expected = mse + torch.where(t == 0, nll, kl) / math.log(2.0)
    assert (nll[:2] > 0.1).all() and (kl[2:] > 1e-3).all()  # guard: both variance terms weigh in
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_denoising_loss_draws_its_own_noise_when_given_none():
    rule = small_diffusion()
    x0, t = torch.randn(4, 3), torch.tensor([0, 1, 20, 49])

    def denoiser(xt, level):
        return 0.5 * xt, torch.tanh(xt)

    torch.manual_seed(10)
    drawn = rule.denoising_loss(denoiser, x0, t)
    torch.manual_seed(10)
    torch.testing.assert_close(drawn, rule.denoising_loss(denoiser, x0, t, torch.randn(4, 3)))


def test_denoising_loss_is_per_token_over_leading_dimensions():
    rule = small_diffusion()
    g = torch.Generator().manual_seed(11)
    x0, noise = torch.rand(2, 3, 2, generator=g) - 0.5, torch.randn(2, 3, 2, generator=g)
    t = torch.tensor([[0, 4, 49], [0, 1, 30]])

    def denoiser(xt, level):
        return 0.5 * xt, torch.tanh(xt)

    batched = rule.denoising_loss(denoiser, x0, t, noise)
    rows = rule.denoising_loss(denoiser, x0.reshape(6, 2), t.reshape(6), noise.reshape(6, 2))
    torch.testing.assert_close(batched, rows.reshape(2, 3))


def test_diffusion_loss_draws_levels_then_noise_like_mar_and_averages_the_repeats():
    """MAR's DiffLoss: levels uniform over the training chain first, then the noise (``randn_like`` of
    the repeated targets); carl averages each token's ``batch_mul`` repeats."""
    rule = randomize(small_diffusion(batch_mul=2), std=0.1)
    hidden, target = torch.randn(3, HIDDEN), torch.randn(3, 3)
    torch.manual_seed(12)
    loss = rule.loss(hidden, target)
    torch.manual_seed(12)
    t = torch.randint(0, 50, (6,))
    noise = torch.randn(6, 3)
    repeated = hidden.repeat(2, 1)
    per_row = rule.denoising_loss(lambda xt, t: rule.net(xt, rule.net.condition(repeated, t)), target.repeat(2, 1), t, noise)
    torch.testing.assert_close(loss, per_row.view(2, 3).mean(0))


def test_training_levels_cover_the_whole_chain_uniformly():
    rule = small_diffusion(train_steps=4, sample_steps=2)
    torch.manual_seed(13)
    counts = torch.bincount(rule.draw_levels(torch.zeros(4000, 3)), minlength=4)
    assert len(counts) == 4 and (counts - 1000).abs().max() < 120, counts  # binomial sd ~27


def test_linear_schedule_reaches_the_tables():
    from carl.scores.diffusion import betas_for

    rule = small_diffusion(schedule="linear")
    torch.testing.assert_close(rule.train_schedule.log_beta.exp().double(), betas_for("linear", 50), rtol=1e-5, atol=0)


def test_discretized_likelihood_bins_are_two_over_255_wide_with_adms_edges():
    from carl.scores.diffusion import discretized_gaussian_log_likelihood

    x = torch.tensor([0.3, 0.3], dtype=torch.float64)
    # a narrow Gaussian centred on the bin's upper (lower) edge puts half its mass in the bin
    mean = torch.tensor([0.3 + 1 / 255, 0.3 - 1 / 255], dtype=torch.float64)
    log_scale = torch.full((2,), math.log(1e-3), dtype=torch.float64)
    torch.testing.assert_close(discretized_gaussian_log_likelihood(x, mean, log_scale), torch.full((2,), math.log(0.5), dtype=torch.float64),
                               rtol=0, atol=1e-6)
    # ADM's edges: only values beyond -0.999 and 0.999 fall in the open-ended bins
    x = torch.tensor([-0.999, 0.999])
    mean, log_scale = x.clone(), torch.full((2,), -2.0)
    inner = discretized_gaussian_log_likelihood(x, mean, log_scale)
    torch.testing.assert_close(inner[0], inner[1])  # both interior bins, symmetric about their means
    assert inner[0] < discretized_gaussian_log_likelihood(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-2.0]))[0] - 0.5


# ---------------------------------------------------------------------------------------------
# Diffusion sampling: both paths condition alike, and a float64 head stays float64


def test_sample_conditions_the_denoiser_as_the_loss_does():
    rule = randomize(small_diffusion(clip_x0=1.0), std=0.2)
    hidden = torch.randn(4, HIDDEN)
    sampled = rule.sample(hidden, temperature=0.8, generator=torch.Generator().manual_seed(14))
    g = torch.Generator().manual_seed(14)
    start = standard_normal((4, 3), hidden, g)
    expected = rule.reverse(lambda x, level: rule.net(x, rule.net.condition(hidden, level)), start, temperature=0.8, generator=g)
    torch.testing.assert_close(sampled, expected, rtol=1e-5, atol=1e-5)


def test_a_float64_head_samples_in_float64():
    rule = randomize(small_diffusion(clip_x0=1.0), std=0.2)
    hidden = torch.randn(4, HIDDEN)
    single = rule.sample(hidden, generator=torch.Generator().manual_seed(15))
    seen = []

    def denoiser(x, level):
        seen.append(x.dtype)
        return 0.1 * x, torch.zeros_like(x)

    rule.double()
    double = rule.sample(hidden.double(), generator=torch.Generator().manual_seed(15))
    assert double.dtype == torch.float32  # tokens come out float32, as from every rule
    torch.testing.assert_close(double, single, rtol=1e-4, atol=1e-4)
    rule.reverse(denoiser, torch.randn(4, 3, dtype=torch.float64), generator=torch.Generator().manual_seed(16))
    assert seen == [torch.float64] * 5  # every step hands the denoiser the caller's dtype


# ---------------------------------------------------------------------------------------------
# Devices: the data's device and the generator's, never torch's default device


RULES = [("energy", {}), ("energy", {"noise": "gaussian"}), ("crps", {}), ("kernel", {}), ("gaussian", {}),
         ("gmm", {}), ("diffusion", {"sample_steps": 3, "clip_x0": 1.0})]


@pytest.mark.parametrize("name,options", RULES, ids=[f"{n}-{o.get('noise', '')}" for n, o in RULES])
def test_rules_ignore_torchs_default_device(name, options):
    """With another default device (``torch.set_default_device("cuda")``; "meta" stands in for it on a CPU
    machine), losses and samples are those of the data's device, from the same random streams."""
    from carl.plugins import registry

    cls = registry("scores").get(name)
    rule = randomize(cls(cls.Config(width=16, **options), hidden_dim=HIDDEN, token_dim=2), std=0.2)
    hidden, target = torch.randn(3, HIDDEN), torch.randn(3, 2)
    generators = [torch.Generator().manual_seed(17), torch.Generator().manual_seed(17)]

    def run(generator):
        torch.manual_seed(18)
        loss = rule.loss(hidden, target)
        unseeded = rule.sample(hidden, temperature=0.9)
        return loss, unseeded, rule.sample(hidden, temperature=0.9, generator=generator)

    expected = run(generators[0])
    with torch.device("meta"):
        got = run(generators[1])
    for value, reference in zip(got, expected):
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "standard_normal"])
def test_noise_is_drawn_from_the_generator_on_its_device(kind):
    """A CPU generator seeds a model on another device: the noise is drawn on the CPU from its stream
    (the same seed gives the same noise on every device) and then moved where ``like`` lives."""
    from carl.scores.generator import draw_noise

    def draw(like, generator):
        if kind == "standard_normal":
            return standard_normal((5, 3), like, generator)
        return draw_noise(5, 3, kind, like, generator)

    def reference(generator):
        return torch.rand(5, 3, generator=generator) - 0.5 if kind == "uniform" else torch.randn(5, 3, generator=generator)

    cpu = draw(torch.empty(0), torch.Generator().manual_seed(19))
    torch.testing.assert_close(cpu, reference(torch.Generator().manual_seed(19)), rtol=0, atol=0)
    g, twin = torch.Generator().manual_seed(19), torch.Generator().manual_seed(19)
    elsewhere = draw(torch.empty(0, device="meta"), g)
    reference(twin)
    assert elsewhere.device.type == "meta" and elsewhere.shape == (5, 3)
    assert torch.equal(g.get_state(), twin.get_state())  # drawn from the CPU stream, not on the other device


# ---------------------------------------------------------------------------------------------
# Log-score heads (mutation survivors)


def test_log_score_loss_is_the_negative_log_density():
    mean, raw = torch.tensor([0.5, -1.0]), torch.tensor([0.3, -0.2])
    rule = pin_head(GaussianScore(GaussianScoreConfig(), hidden_dim=HIDDEN, token_dim=2), torch.cat([mean, raw]))
    y = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    expected = -torch.distributions.Normal(mean, rule.log_std(raw).exp()).log_prob(y).sum(-1)
    torch.testing.assert_close(rule.loss(torch.randn(2, HIDDEN), y), expected)


def test_bounded_log_std_is_the_identity_between_far_bounds_and_saturates_at_them():
    from carl.scores.log_score import bounded_log_std

    raw = torch.linspace(-2.0, 2.0, 9)
    torch.testing.assert_close(bounded_log_std(raw, 1e-6, 1e6), raw, rtol=0, atol=1e-5)
    ends = bounded_log_std(torch.tensor([-100.0, 100.0]), 1e-3, 10.0)
    torch.testing.assert_close(ends, torch.tensor([math.log(1e-3), math.log(10.0)]), rtol=0, atol=1e-3)


def test_mixture_log_density_keeps_leading_dimensions():
    from carl.scores.log_score import mixture_log_density

    g = torch.Generator().manual_seed(20)
    y, logits = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 5, generator=g)
    mean, log_std = torch.randn(2, 4, 5, 3, generator=g), 0.3 * torch.randn(2, 4, 5, 3, generator=g)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1))
    torch.testing.assert_close(mixture_log_density(y, logits.log_softmax(-1), mean, log_std), reference.log_prob(y))


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


def test_heads_record_their_token_size():
    from carl.plugins import registry

    for name in ("energy", "crps", "kernel", "gaussian", "gmm"):
        cls = registry("scores").get(name)
        assert cls(cls.Config(), hidden_dim=HIDDEN, token_dim=3).token_dim == 3, name


# ---------------------------------------------------------------------------------------------
# Sample-based estimators over several targets and dimensions; guidance; train temperature


def test_crps_diversity_is_per_target_and_dimension():
    draws = torch.tensor([[[0.0, 0.0], [1.0, 5.0]], [[2.0, 0.0], [1.0, 1.0]]])  # (M=2, targets=2, D=2)
    y = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    to_target = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # mean |x - y| over the two draws
    diversity = torch.tensor([[2.0, 0.0], [0.0, 4.0]])  # |x1 - x2|
    torch.testing.assert_close(crps(draws, y), (to_target - 0.5 * diversity).sum(-1))


def test_linear_kernel_score_over_several_targets():
    rule = kernel_rule("linear")
    draws = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 1.0]], [[3.0, 1.0], [0.0, 2.0], [1.0, 1.0]]])  # (M=2, T=3, D=2)
    y = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    x1, x2 = draws
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    expected = 0.5 * dot(x1, x2) - 0.5 * (dot(x1, y) + dot(x2, y)) + 0.5 * dot(y, y)  # = |mean x - y|^2 / 2 - |x1 - x2|^2 / 8
    torch.testing.assert_close(rule.score_draws(draws, y), expected)


def test_guidance_mix_is_the_cfg_extrapolation():
    cond, uncond = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    torch.testing.assert_close(Guidance(uncond, 3.0).mix(cond), torch.tensor([3 * 1.0 - 2 * 0.5, 3 * -2.0 - 2 * 4.0]))


@pytest.mark.parametrize("name", ["gaussian", "gmm", "diffusion"])
def test_rules_without_a_train_temperature_accept_only_one(name):
    from carl.plugins import registry

    cls = registry("scores").get(name)
    rule = cls(cls.Config(**({"sample_steps": 5} if name == "diffusion" else {})), hidden_dim=HIDDEN, token_dim=2)
    rule.set_train_temperature(1.0)  # the proper score: nothing to change
    with pytest.raises(ValueError, match=rf"^{type(rule).__name__} has no train temperature; got 2.0$"):
        rule.set_train_temperature(2.0)
