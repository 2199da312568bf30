"""The diffusion loss (:mod:`carl.scores.diffusion`, MAR's DiffLoss): the schedule, the reverse
step and the loss against closed forms, the denoiser recomputed from its parameter names, guidance,
and the fast sampler against the table lookups it replaces."""

import math

import pytest
import torch

from carl.scores import DiffusionScore, DiffusionScoreConfig, Guidance
from carl.scores.log_score import standard_normal

from helpers.scores import TRUTHS, adaln_body_reference, linear, params_under, randomize, trained_like
from carl.config import load_recipe
from carl.errors import RecipeError

HIDDEN = 4


# ---------------------------------------------------------------------------------------------
# The schedule and the reverse step against closed forms


def test_linear_betas_are_float64_and_ho_et_al():
    from carl.scores.diffusion import betas_for

    betas = betas_for("linear", 1000)
    assert betas.dtype == torch.float64  # the tables are products over 1000 steps: float32 would drift
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(betas_for("linear", 250), torch.linspace(4e-4, 0.08, 250, dtype=torch.float64), rtol=1e-15, atol=0)


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


def test_respacing_every_level_is_the_training_schedule():
    full = DiffusionScore(DiffusionScoreConfig(sample_steps=1000), hidden_dim=4, token_dim=2)
    for name in ("sqrt_alpha_bar", "posterior_mean_x0", "posterior_log_var", "log_beta"):
        torch.testing.assert_close(getattr(full.sample_schedule, name), getattr(full.train_schedule, name))
    steps = DiffusionScore(DiffusionScoreConfig(), hidden_dim=4, token_dim=2).sample_schedule.timesteps
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == 999 and (steps.diff() > 0).all()


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


@pytest.mark.parametrize("truth", TRUTHS)
def test_reverse_chain_with_the_true_score_samples_the_truth(truth):
    # The sampler (respaced steps, posterior means, variances) is right iff the exact denoiser
    # of a known distribution brings pure noise back to that distribution.
    p = TRUTHS[truth]
    d = p.m.shape[1]
    rule = DiffusionScore(DiffusionScoreConfig(sample_steps=100), hidden_dim=4, token_dim=d)
    g = torch.Generator().manual_seed(0)
    levels = rule.sample_schedule.timesteps

    def denoiser(x, level):
        t = torch.full((x.shape[0],), int(level), dtype=torch.long)
        step = (levels == level).nonzero()[0]
        return p.eps(x, t, rule.train_schedule), torch.full_like(x, -1.0) if step > 0 else torch.zeros_like(x)

    x = rule.reverse(denoiser, torch.randn(20_000, d, generator=g), generator=g)
    real = p.sample((20_000,), g)
    torch.testing.assert_close(x.mean(0), real.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0), real.std(0), atol=0.05, rtol=0)
    # the weight of each mode survives: share of samples right of the midpoint between modes
    mid = p.m.mean(0)[0].item()
    assert abs((x[:, 0] > mid).float().mean() - (real[:, 0] > mid).float().mean()) < 0.02
    cold = rule.reverse(denoiser, torch.randn(20_000, d, generator=g), temperature=0.0, generator=g)
    assert cold.std(0).max() < x.std(0).max()  # temperature narrows the samples


# ---------------------------------------------------------------------------------------------
# The denoiser: MAR's SimpleMLPAdaLN and its level embedding


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


def test_diffusion_state_holds_only_mar_weights():
    """The schedule tables are derived, not saved: a checkpoint has MAR's ``diffloss`` keys only."""
    rule = DiffusionScore(DiffusionScoreConfig(depth=1, width=8), hidden_dim=HIDDEN, token_dim=2)
    keys = set(rule.state_dict())
    assert keys and all(key.startswith("net.") for key in keys), sorted(keys)
    assert not any("freqs" in key for key in keys)


def test_diffusion_sample_steps_beyond_train_steps_names_the_field():
    with pytest.raises(ValueError, match=r"^sample_steps 2000 exceeds train_steps 1000$"):
        DiffusionScoreConfig(train_steps=1000, sample_steps=2000)


# ---------------------------------------------------------------------------------------------
# The loss: MSE of the noise plus the variance bound in bits, per token


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


# ---------------------------------------------------------------------------------------------
# Sampling: guidance mixes the noise, both paths condition alike, float64 stays float64


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


def test_clip_x0_keeps_an_inaccurate_head_in_range():
    # An untrained denoiser is far from the identity at t ~ T, where the step divides by
    # sqrt(alpha_bar) ~ 5e-5: unclipped samples explode; clipped ones stay in the data range.
    hidden = torch.randn(64, 4)
    draws = {}
    for clip in (None, 1.0):
        torch.manual_seed(0)
        rule = trained_like(DiffusionScore(DiffusionScoreConfig(clip_x0=clip, sample_steps=20), hidden_dim=4, token_dim=2))
        draws[clip] = rule.sample(hidden, generator=torch.Generator().manual_seed(0))
    assert draws[None].abs().max() > 10 and draws[1.0].abs().max() < 1.5


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("guided", [False, True])
def test_diffusion_fast_sampler_matches_the_table_lookup_chain(clip, guided):
    torch.manual_seed(0)
    rule = DiffusionScore(DiffusionScoreConfig(depth=2, width=32, sample_steps=25, clip_x0=clip), hidden_dim=8, token_dim=3)
    for p in rule.net.parameters():  # away from the zero-initialised output, so eps and v matter
        p.data.add_(0.1 * torch.randn_like(p))
    hidden = torch.randn(16, 8)
    guidance = None
    if guided:
        from carl.scores.base import Guidance

        guidance = Guidance(uncond=torch.randn(16, 8), scale=2.5)
    fast = rule.sample(hidden, temperature=0.9, guidance=guidance, generator=torch.Generator().manual_seed(3))
    plain = table_lookup_sample(rule, hidden, 0.9, guidance, torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def table_lookup_sample(rule, hidden, temperature, guidance, generator):
    """The diffusion sampler as it was: the level embedded at every step, tables indexed on the device."""
    rows, schedule = hidden.shape[0], rule.sample_schedule
    if guidance is not None:
        hidden = torch.cat([hidden, guidance.uncond])
    cond = rule.net.cond_embed(hidden)
    x = standard_normal((rows, rule.net.input_proj.in_features), hidden, generator)
    with torch.no_grad():
        for i in reversed(range(len(schedule))):
            y = rule.net.time_embed(schedule.timesteps[i : i + 1]) + cond
            eps, v = rule.net(x if guidance is None else x.repeat(2, 1), y)
            if guidance is not None:
                c, u = eps.chunk(2)
                eps, v = u + guidance.scale * (c - u), v[:rows]
            mean, log_var = schedule.p_mean_log_var(x, torch.full((1,), i), eps, v, rule.config.clip_x0)
            if i > 0:
                mean = mean + torch.exp(0.5 * log_var) * temperature * standard_normal(x.shape, x, generator)
            x = mean
    return x


def test_one_diffusion_sampling_step_is_refused_when_the_recipe_is_read():
    with pytest.raises(RecipeError, match=r"model.score.sample_steps: 1 is out of range; allowed: >= 2"):
        load_recipe("tiny", ["model.score={name: diffusion, sample_steps: 1}"])
