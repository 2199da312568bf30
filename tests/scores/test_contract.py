"""The scoring-rule family (:mod:`carl.scores.base`): a contract every registered rule keeps, the
guidance they share, and propriety by Monte Carlo (the truth has the lowest expected loss)."""

import math

import pytest
import torch

from carl.plugins import registry
from carl.scores import (
    CRPSScore, DiffusionScore, DiffusionScoreConfig, GaussianScoreConfig, Guidance, MixtureScoreConfig,
    SampleScoreConfig, crps, energy_score,
)
from carl.scores.log_score import gaussian_log_density

from helpers.scores import TRUTHS, alternatives, randomize, trained_like

HIDDEN, TOKEN = 8, 3
SMALL_HIDDEN = 4  # the hidden size of the tests written against closed forms


def build(name: str, **options):
    cls = registry("scores").get(name)
    config = cls.Config(**options) if hasattr(cls, "Config") else None
    return cls(config, hidden_dim=HIDDEN, token_dim=TOKEN)


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


@pytest.mark.parametrize("name", ["energy", "crps", "kernel", "gaussian", "gmm", "diffusion"])
def test_default_sampling_temperature_is_one(name):
    from carl.plugins import registry

    cls = registry("scores").get(name)
    rule = cls(cls.Config(**({"sample_steps": 5} if name == "diffusion" else {})), hidden_dim=SMALL_HIDDEN, token_dim=2)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    hidden = torch.randn(4, SMALL_HIDDEN)
    default = rule.sample(hidden, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(default, rule.sample(hidden, temperature=1.0, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(default, rule.sample(hidden, temperature=0.5, generator=torch.Generator().manual_seed(1)))


def test_heads_record_their_token_size():
    from carl.plugins import registry

    for name in ("energy", "crps", "kernel", "gaussian", "gmm"):
        cls = registry("scores").get(name)
        assert cls(cls.Config(), hidden_dim=SMALL_HIDDEN, token_dim=3).token_dim == 3, name


def test_batch_mul_and_train_temperature_are_refused_where_meaningless():
    with pytest.raises(ValueError, match="batch_mul must be 1"):
        GaussianScoreConfig(batch_mul=2)
    with pytest.raises(ValueError, match="batch_mul must be 1"):
        MixtureScoreConfig(batch_mul=4)
    for rule in (build("gaussian"), build("gmm"), build("diffusion")):
        with pytest.raises(ValueError, match="no train temperature"):
            rule.set_train_temperature(0.99)


@pytest.mark.parametrize("name", ["gaussian", "gmm", "diffusion"])
def test_rules_without_a_train_temperature_accept_only_one(name):
    from carl.plugins import registry

    cls = registry("scores").get(name)
    rule = cls(cls.Config(**({"sample_steps": 5} if name == "diffusion" else {})), hidden_dim=SMALL_HIDDEN, token_dim=2)
    rule.set_train_temperature(1.0)  # the proper score: nothing to change
    with pytest.raises(ValueError, match=rf"^{type(rule).__name__} has no train temperature; got 2.0$"):
        rule.set_train_temperature(2.0)


def test_strict_propriety_is_declared_honestly():
    assert build("energy").strictly_proper and build("gaussian").strictly_proper and build("diffusion").strictly_proper
    assert not build("kernel", kernel="linear").strictly_proper and build("kernel", kernel="gaussian").strictly_proper
    assert not build("crps").strictly_proper  # per-dimension CRPS is blind to dependence when D > 1
    assert CRPSScore(SampleScoreConfig(), hidden_dim=4, token_dim=1).strictly_proper


def test_guidance_mix_is_the_cfg_extrapolation():
    cond, uncond = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    torch.testing.assert_close(Guidance(uncond, 3.0).mix(cond), torch.tensor([3 * 1.0 - 2 * 0.5, 3 * -2.0 - 2 * 4.0]))


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
    rule = randomize(cls(cls.Config(width=16, **options), hidden_dim=SMALL_HIDDEN, token_dim=2), std=0.2)
    hidden, target = torch.randn(3, SMALL_HIDDEN), torch.randn(3, 2)
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


# ---------------------------------------------------------------------------------------------
# Propriety by Monte Carlo: the truth has the lowest expected loss


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
