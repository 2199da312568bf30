"""The scoring-rule family: a contract every registered rule keeps, propriety by Monte Carlo,
and closed-form values."""

import math

import pytest
import torch

from carl.plugins import registry
from carl.scores import (
    CRPSScore, DiffusionScore, DiffusionScoreConfig, EnergyScore, EnergyScoreConfig, GaussianScore,
    GaussianScoreConfig, Guidance, KernelScore, KernelScoreConfig, MixtureScore, MixtureScoreConfig, SampleScore,
    SampleScoreConfig, crps, energy_score,
)
from carl.scores.log_score import gaussian_log_density, mixture_log_density

HIDDEN, TOKEN = 8, 3


def build(name: str, **options):
    cls = registry("scores").get(name)
    config = cls.Config(**options) if hasattr(cls, "Config") else None
    return cls(config, hidden_dim=HIDDEN, token_dim=TOKEN)


def trained_like(rule):
    """Zero-initialised output layers hide gradients at step 0: perturb every weight a little."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return rule


# ---------------------------------------------------------------------------------------------
# The contract, for every registered rule


@pytest.fixture(params=sorted(registry("scores").names()))
def rule(request):
    return trained_like(build(request.param))


def test_loss_shape_and_gradients(rule):
    hidden = torch.randn(10, HIDDEN, requires_grad=True)
    loss = rule.loss(hidden, torch.randn(10, TOKEN))
    assert loss.shape == (10,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    head = [p for p in rule.parameters() if p.requires_grad]
    assert head and all(p.grad is not None for p in head)
    assert sum(p.grad.abs().sum() for p in head) > 0
    assert isinstance(rule.strictly_proper, bool)


def test_sampling_is_reproducible_under_a_seed(rule):
    hidden = torch.randn(6, HIDDEN)

    def draw(seed):
        return rule.sample(hidden, temperature=0.9, generator=torch.Generator().manual_seed(seed))

    first = draw(1)
    assert first.shape == (6, TOKEN) and first.dtype == torch.float32
    torch.testing.assert_close(first, draw(1), rtol=0, atol=0)
    assert not torch.allclose(first, draw(2))


def test_guidance_with_scale_one_is_no_guidance(rule):
    hidden, uncond = torch.randn(6, HIDDEN), torch.randn(6, HIDDEN)
    plain = rule.sample(hidden, generator=torch.Generator().manual_seed(3))
    guided = rule.sample(hidden, guidance=Guidance(uncond, 1.0), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-4)
    strong = rule.sample(hidden, guidance=Guidance(uncond, 3.0), generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(strong, plain, atol=1e-3)  # and guidance does something


def test_batch_mul_and_train_temperature_are_refused_where_meaningless():
    with pytest.raises(ValueError, match="batch_mul must be 1"):
        GaussianScoreConfig(batch_mul=2)
    with pytest.raises(ValueError, match="batch_mul must be 1"):
        MixtureScoreConfig(batch_mul=4)
    for rule in (build("gaussian"), build("gmm"), build("diffusion")):
        with pytest.raises(ValueError, match="no train temperature"):
            rule.set_train_temperature(0.99)


def test_strict_propriety_is_declared_honestly():
    assert build("energy").strictly_proper and build("gaussian").strictly_proper and build("diffusion").strictly_proper
    assert not build("kernel", kernel="linear").strictly_proper and build("kernel", kernel="gaussian").strictly_proper
    assert not build("crps").strictly_proper  # per-dimension CRPS is blind to dependence when D > 1
    assert CRPSScore(SampleScoreConfig(), hidden_dim=4, token_dim=1).strictly_proper


# ---------------------------------------------------------------------------------------------
# Propriety by Monte Carlo: the truth has the lowest expected loss


class Mixture:
    """A diagonal Gaussian mixture with closed-form density, sampler and noised score."""

    def __init__(self, weights, means, stds):
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.m = torch.tensor(means, dtype=torch.float64)  # (K, D)
        self.s = torch.tensor(stds, dtype=torch.float64)  # (K,)

    def shifted(self, by):
        return Mixture(self.w.tolist(), (self.m + by).tolist(), self.s.tolist())

    def rescaled(self, by):
        return Mixture(self.w.tolist(), self.m.tolist(), (self.s * by).tolist())

    def mode_dropped(self):
        k = int(self.w.argmax())
        return Mixture([1.0], self.m[k : k + 1].tolist(), self.s[k : k + 1].tolist())

    def sample(self, shape, g):
        d = self.m.shape[1]
        return self.transform(torch.rand(shape, generator=g, dtype=torch.float64), torch.randn(*shape, d, generator=g, dtype=torch.float64))

    def transform(self, u, z):
        """Samples from uniforms ``u`` (pick the component) and normals ``z``: common random
        numbers, so that candidates are compared on the same draws."""
        k = torch.searchsorted(self.w.cumsum(0)[:-1].contiguous(), u.contiguous())
        return (self.m[k] + self.s[k][..., None] * z).float()

    def log_density(self, y):
        log_std = self.s.log()[:, None].expand_as(self.m)
        return mixture_log_density(y, self.w.log().expand(*y.shape[:-1], -1), self.m, log_std)

    def eps(self, xt, t, schedule):
        """E[noise | x_t] = -sqrt(1 - abar) grad log p_t(x_t), with p_t the noised mixture."""
        a = schedule.sqrt_alpha_bar[t].double()[:, None, None]
        b2 = 1 - a**2
        var = a**2 * self.s[:, None] ** 2 + b2  # (M, K, 1)
        diff = xt.double()[:, None] - a * self.m  # (M, K, D)
        log_r = self.w.log() - 0.5 * (diff**2 / var).sum(-1) - 0.5 * self.m.shape[1] * var[..., 0].log()
        r = log_r.softmax(-1)[..., None]
        grad = -(r * diff / var).sum(1)
        return (-b2[:, 0].sqrt() * grad).float()


TWO_MODES = Mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 1.0]], [0.4, 0.6])  # 2-D, bimodal
SKEWED = Mixture([0.8, 0.2], [[0.0], [2.0]], [0.5, 1.0])  # 1-D, right-skewed
TRUTHS = {"two-modes": TWO_MODES, "skewed": SKEWED}


def alternatives(p: Mixture) -> dict[str, Mixture]:
    return {"shifted": p.shifted(0.5), "wider": p.rescaled(1.6), "narrower": p.rescaled(0.5), "one-mode": p.mode_dropped()}


def sample_rule(name, token_dim):
    options = {"kernel": {"kernel": "gaussian", "bandwidth": 1.0}}.get(name, {})
    return registry("scores").get(name)(
        registry("scores").get(name).Config(**options), hidden_dim=4, token_dim=token_dim
    )


@pytest.mark.parametrize("truth", TRUTHS)
@pytest.mark.parametrize("name", ["energy", "crps", "kernel"])
def test_sample_based_rules_prefer_the_truth(name, truth):
    p = TRUTHS[truth]
    rule = sample_rule(name, p.m.shape[1])
    g = torch.Generator().manual_seed(0)
    y = p.sample((40_000,), g)
    u, z = torch.rand(4, 40_000, generator=g, dtype=torch.float64), torch.randn(4, 40_000, p.m.shape[1], generator=g, dtype=torch.float64)

    def expected(q):
        return rule.score_draws(q.transform(u, z), y).mean().item()

    true = expected(p)
    for alt, q in alternatives(p).items():
        assert true < expected(q) - 0.002, (name, truth, alt, true, expected(q))
    # Guard: without the diversity term (train temperature 0) a narrower forecast would win.
    rule.set_train_temperature(0.0)
    assert expected(alternatives(p)["narrower"]) < expected(p)


@pytest.mark.parametrize("truth", TRUTHS)
def test_log_score_prefers_the_truth(truth):
    p = TRUTHS[truth]
    y = p.sample((20_000,), torch.Generator().manual_seed(0))
    true = -p.log_density(y).mean()
    for alt, q in alternatives(p).items():
        assert true < -q.log_density(y).mean() - 0.05, (truth, alt)


def test_gaussian_log_score_prefers_the_truth():
    y = 0.5 + 1.5 * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))
    mean, log_std = torch.full_like(y, 0.5), torch.full_like(y, math.log(1.5))

    def loss(m, s):
        return -gaussian_log_density(y, m, s).mean()

    true = loss(mean, log_std)
    assert true < loss(mean + 0.3, log_std) - 0.02  # exactly 2 x 0.3^2 / (2 x 1.5^2) = 0.04 in expectation
    assert true < loss(mean, log_std + 0.4) - 0.05 and true < loss(mean, log_std - 0.4) - 0.05


@pytest.mark.parametrize("truth", TRUTHS)
def test_denoising_loss_prefers_the_true_score(truth):
    p = TRUTHS[truth]
    rule = DiffusionScore(DiffusionScoreConfig(), hidden_dim=4, token_dim=p.m.shape[1])
    schedule = rule.train_schedule
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = p.sample((n,), g)
    t = torch.randint(0, len(schedule), (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g)  # common random numbers for every candidate

    def expected(q):
        def denoiser(xt, t):
            return q.eps(xt, t, schedule), torch.zeros_like(xt)
        return rule.denoising_loss(denoiser, x0, t, noise).mean().item()

    true = expected(p)
    for alt, q in alternatives(p).items():
        assert true < expected(q) - 0.005, (truth, alt, true, expected(q))


def test_crps_cannot_see_dependence_but_energy_can():
    g = torch.Generator().manual_seed(0)
    n = 40_000
    z = torch.randn(n, 1, generator=g)
    y = torch.cat([z, z], -1)  # perfectly correlated dimensions
    correlated = torch.randn(4, n, 1, generator=g).expand(-1, -1, 2)
    independent = torch.randn(4, n, 2, generator=g)  # same marginals
    assert abs(crps(correlated, y).mean() - crps(independent, y).mean()) < 0.02
    assert energy_score(correlated, y, 1.0).mean() < energy_score(independent, y, 1.0).mean() - 0.05


# ---------------------------------------------------------------------------------------------
# Closed forms


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


def test_one_component_mixture_is_the_gaussian():
    gmm = MixtureScore(MixtureScoreConfig(components=1), hidden_dim=4, token_dim=3)
    gauss = GaussianScore(GaussianScoreConfig(), hidden_dim=4, token_dim=3)
    params, y = torch.randn(5, 7), torch.randn(5, 3)
    torch.testing.assert_close(gmm.log_density(params, y), gauss.log_density(params[:, 1:], y))


def test_mixture_log_density_is_stable_far_from_every_mode():
    y = torch.full((1, 2), 1e3)
    value = mixture_log_density(y, torch.tensor([[-0.1, -2.4]]), torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    assert torch.isfinite(value).all() and value.item() < -1e5


def test_crps_of_a_gaussian_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[-1.0], [0.3], [2.0]])
    draws = 0.5 + 1.5 * torch.randn(2, 400_000, 3, 1, generator=g)
    z = (y[:, 0] - 0.5) / 1.5
    normal = torch.distributions.Normal(0.0, 1.0)
    closed = 1.5 * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))
    torch.testing.assert_close(crps(draws, y).mean(0), closed, atol=0.01, rtol=0)


def test_energy_score_of_point_masses_is_the_distance():
    x, y = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    draws = x.expand(4, 1, 3)
    for alpha in (0.5, 1.0, 1.5):
        torch.testing.assert_close(energy_score(draws, y[None], alpha), torch.tensor([3.0**alpha]))


def test_energy_kernel_score_is_the_energy_score():
    torch.manual_seed(0)
    kernel = KernelScore(KernelScoreConfig(kernel="energy", alpha=1.3, width=16, noise_dim=4), hidden_dim=4, token_dim=3)
    energy = EnergyScore(EnergyScoreConfig(alpha=1.3, width=16, noise_dim=4), hidden_dim=4, token_dim=3)
    draws, y = torch.randn(4, 7, 3), torch.randn(7, 3)
    torch.testing.assert_close(kernel.score_draws(draws, y), energy.score_draws(draws, y))


def test_sample_based_rules_share_the_generator_draws():
    assert issubclass(CRPSScore, SampleScore) and issubclass(KernelScore, SampleScore)


# ---------------------------------------------------------------------------------------------
# Diffusion specifics


def test_respacing_every_level_is_the_training_schedule():
    full = DiffusionScore(DiffusionScoreConfig(sample_steps=1000), hidden_dim=4, token_dim=2)
    for name in ("sqrt_alpha_bar", "posterior_mean_x0", "posterior_log_var", "log_beta"):
        torch.testing.assert_close(getattr(full.sample_schedule, name), getattr(full.train_schedule, name))
    steps = DiffusionScore(DiffusionScoreConfig(), hidden_dim=4, token_dim=2).sample_schedule.timesteps
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == 999 and (steps.diff() > 0).all()


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
