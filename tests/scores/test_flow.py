"""The flow-matching head: its loss against the exact velocity of known mixtures, its ODE sampler,
sampler options, guidance, temperature, and a small head that learns a bimodal distribution."""


import pytest
import torch
from helpers.scores import TRUTHS, TWO_MODES, Mixture

from carl.errors import FieldError
from carl.scores import FlowScore, FlowScoreConfig, Guidance

HIDDEN = 4


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (0 iff the distributions are equal)."""
    x, y = x.double(), y.double()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


def head(**options) -> FlowScore:
    return FlowScore(FlowScoreConfig(**{"width": 16, "depth": 2, **options}), hidden_dim=HIDDEN, token_dim=2)


def randomize(rule, std=0.2):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return rule


# ---------------------------------------------------------------------------------------------
# The loss: a proper score of the velocity field


@pytest.mark.parametrize("truth", TRUTHS)
def test_the_true_velocity_has_the_lowest_expected_loss(truth):
    p = TRUTHS[truth]
    g = torch.Generator().manual_seed(0)
    n = 40_000
    y = p.sample((n,), g)
    t, noise = torch.rand(n, generator=g), torch.randn(y.shape, generator=g)  # common random numbers

    def expected(q):
        return FlowScore.flow_matching_loss(q.velocity, y, t, noise).mean().item()

    true = expected(p)
    alternatives = {"shifted": p.shifted(0.5), "wider": p.rescaled(1.6), "narrower": p.rescaled(0.5), "one-mode": p.mode_dropped()}
    for name, q in alternatives.items():
        assert true < expected(q) - 0.005, (truth, name, true, expected(q))
    # Guard: the regression target itself is noisy; a field off by a small constant loses by its square.
    off = expected(type("Off", (), {"velocity": staticmethod(lambda x, t: p.velocity(x, t) + 0.1)}))
    assert off - true == pytest.approx(0.01, abs=2e-3)


def test_loss_is_the_squared_velocity_error_at_the_interpolated_point():
    y, noise, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, 0.5]]), torch.tensor([0.25])
    seen = []

    def velocity(x, time):
        seen.append((x, time))
        return torch.tensor([[0.0, 0.0]])

    loss = FlowScore.flow_matching_loss(velocity, y, t, noise)
    torch.testing.assert_close(seen[0][0], torch.tensor([[-0.5, 0.875]]))  # 0.75 noise + 0.25 y
    torch.testing.assert_close(loss, torch.tensor([(2.0**2 + 1.5**2) / 2]))  # target y - noise = (2, 1.5)


def test_loss_averages_batch_mul_repeats_each_with_its_own_time_and_noise():
    rule = randomize(head(batch_mul=3))
    hidden, target = torch.randn(5, HIDDEN), torch.randn(5, 2)
    torch.manual_seed(1)
    loss = rule.loss(hidden, target)
    torch.manual_seed(1)
    t, noise = torch.rand(15), torch.randn(15, 2)
    h, y = hidden.repeat(3, 1), target.repeat(3, 1)
    rows = FlowScore.flow_matching_loss(lambda x, t: rule.net(x, rule.net.condition(h, t)), y, t, noise)
    torch.testing.assert_close(loss, rows.view(3, 5).mean(0))
    assert rule.config.batch_mul == 3 and len(set(t.tolist())) == 15


def test_logit_normal_times_gather_in_the_middle():
    like = torch.empty(0)
    torch.manual_seed(0)
    uniform = head().draw_times(20_000, like)
    torch.manual_seed(0)
    logit = head(time_sampling="logit_normal").draw_times(20_000, like)
    assert 0 <= logit.min() and logit.max() <= 1
    assert ((logit - 0.5).abs() < 0.25).float().mean() > ((uniform - 0.5).abs() < 0.25).float().mean() + 0.15


# ---------------------------------------------------------------------------------------------
# The sampler: the exact field carries noise to the truth; solvers, steps, temperature, guidance


@pytest.mark.parametrize("truth", TRUTHS)
def test_integrating_the_true_velocity_samples_the_truth(truth):
    p = TRUTHS[truth]
    d = p.m.shape[1]
    rule = FlowScore(FlowScoreConfig(sample_steps=20, solver="midpoint"), hidden_dim=HIDDEN, token_dim=d)
    g = torch.Generator().manual_seed(0)
    x = rule.integrate(p.velocity, torch.randn(8000, d, generator=g))
    w, m, s = p.w[:, None], p.m, p.s[:, None]
    mean = (w * m).sum(0)  # the mixture's exact moments
    std = ((w * (s**2 + m**2)).sum(0) - mean**2).sqrt()
    torch.testing.assert_close(x.mean(0).double(), mean, atol=0.07, rtol=0)  # 3 standard errors
    torch.testing.assert_close(x.std(0).double(), std, atol=0.05, rtol=0)
    mid = p.m.mean(0)[0].item()  # the weight of each mode survives
    assert abs((x[:, 0] > mid).float().mean().item() - p.w[p.m[:, 0] > mid].sum().item()) < 0.02
    assert energy_distance(x[:2000], p.sample((2000,), g)) < 0.01


GAUSSIAN = Mixture([1.0], [[1.0, -2.0]], [0.5])  # its flow map is exactly x_1 = m + s z


def test_midpoint_is_more_accurate_than_euler_at_equal_steps_and_both_converge():
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    exact = GAUSSIAN.m.float() + 0.5 * z
    errors = {}
    for solver in ("euler", "midpoint"):
        for steps in (2, 8):
            rule = head(sample_steps=steps, solver=solver)
            errors[solver, steps] = (rule.integrate(GAUSSIAN.velocity, z) - exact).abs().max().item()
    assert errors["midpoint", 2] < errors["euler", 2] / 3 and errors["midpoint", 8] < errors["euler", 8] / 3
    assert errors["euler", 8] < errors["euler", 2] / 2 and errors["midpoint", 8] < 1e-3


@pytest.mark.parametrize("solver,calls_per_step", [("euler", 1), ("midpoint", 2)])
def test_steps_and_solver_set_the_velocity_evaluations(solver, calls_per_step):
    times = []

    def velocity(x, t):
        times.append(round(t.item(), 6))
        return torch.ones_like(x)

    rule = head(sample_steps=4, solver=solver)
    out = rule.integrate(velocity, torch.zeros(3, 2))
    torch.testing.assert_close(out, torch.ones(3, 2))  # a unit velocity for unit time
    expected = [0.0, 0.25, 0.5, 0.75] if solver == "euler" else [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]
    assert times == expected and len(times) == 4 * calls_per_step


def test_temperature_scales_the_initial_noise_so_a_gaussian_token_is_scaled_about_its_mean():
    rule = head(sample_steps=8, solver="midpoint")
    z = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 0.5, 0.0):
        x = rule.integrate(GAUSSIAN.velocity, temperature * z)
        torch.testing.assert_close(x.mean(0), GAUSSIAN.m[0].float(), atol=0.02, rtol=0)
        torch.testing.assert_close(x.std(0), torch.full((2,), 0.5 * temperature), atol=0.02, rtol=0)


def test_sample_is_the_integral_of_the_conditioned_network_from_scaled_noise():
    rule = randomize(head(sample_steps=3, solver="midpoint"))
    hidden = torch.randn(4, HIDDEN)
    sampled = rule.sample(hidden, temperature=0.8, generator=torch.Generator().manual_seed(2))
    start = 0.8 * torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    expected = rule.integrate(lambda x, t: rule.net(x, rule.net.condition(hidden, t)), start)
    torch.testing.assert_close(sampled, expected, rtol=1e-5, atol=1e-5)


def test_guidance_mixes_the_velocities_at_every_evaluation():
    rule = randomize(head(sample_steps=3, solver="midpoint"))
    hidden, uncond = torch.randn(4, HIDDEN), torch.randn(4, HIDDEN)
    guided = rule.sample(hidden, guidance=Guidance(uncond, 2.5), generator=torch.Generator().manual_seed(3))

    def mixed(x, t):
        v_c, v_u = rule.net(x, rule.net.condition(hidden, t)), rule.net(x, rule.net.condition(uncond, t))
        return v_u + 2.5 * (v_c - v_u)

    start = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(guided, rule.integrate(mixed, start), rtol=1e-5, atol=1e-5)
    plain = rule.sample(hidden, guidance=Guidance(uncond, 1.0), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain, rule.sample(hidden, generator=torch.Generator().manual_seed(3)), rtol=1e-5, atol=1e-5)


def test_default_temperature_is_one_and_the_rule_follows_the_datas_device():
    rule = randomize(head(sample_steps=3))
    hidden, target = torch.randn(3, HIDDEN), torch.randn(3, 2)
    default = rule.sample(hidden, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(default, rule.sample(hidden, temperature=1.0, generator=torch.Generator().manual_seed(4)))

    def run():
        torch.manual_seed(5)
        return rule.loss(hidden, target), rule.sample(hidden, temperature=0.9, generator=torch.Generator().manual_seed(6))

    expected = run()
    with torch.device("meta"):  # stands in for torch.set_default_device("cuda")
        got = run()
    for value, reference in zip(got, expected):
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Sampler options: changed without retraining, refused when nonsense


def test_sampler_options_change_on_a_trained_head_without_touching_its_weights():
    rule = randomize(head(sample_steps=2))
    state = {k: v.clone() for k, v in rule.state_dict().items()}
    hidden = torch.randn(4, HIDDEN)
    coarse = rule.sample(hidden, generator=torch.Generator().manual_seed(7))
    rule.set_sampler(sample_steps=32, solver="midpoint")
    assert (rule.config.sample_steps, rule.config.solver, rule.config.width) == (32, "midpoint", 16)
    fine = rule.sample(hidden, generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(coarse, fine, atol=1e-3)
    assert all(torch.equal(state[k], v) for k, v in rule.state_dict().items())


@pytest.mark.parametrize("options,message", [
    ({"sample_steps": 0}, "sample_steps 0 is out of range; allowed: >= 1"),
    ({"solver": "rk4"}, "solver 'rk4' is not one of euler, midpoint"),
])
def test_nonsense_sampler_options_are_refused_naming_the_field(options, message):
    with pytest.raises(FieldError, match=f"^{message}$"):
        FlowScoreConfig(**options)
    rule = head()
    with pytest.raises(FieldError, match=f"^{message}$"):
        rule.set_sampler(**options)
    assert rule.config == FlowScoreConfig(width=16, depth=2)  # unchanged by the refusal


def test_train_temperature_is_refused():
    with pytest.raises(ValueError, match="no train temperature"):
        head().set_train_temperature(0.99)
    assert head().strictly_proper


# ---------------------------------------------------------------------------------------------
# Learning: a small head fits a conditional bimodal distribution


@pytest.fixture
def one_thread():
    """A 32-wide head gains nothing from intra-op threads, and on a busy machine their
    synchronisation makes each step ~15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_small_head_learns_a_bimodal_distribution(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    truths = [TWO_MODES, TWO_MODES.shifted(torch.tensor([0.0, -3.0]))]  # two conditions
    codes = torch.eye(2, HIDDEN)  # the "hidden state" of each condition
    rule = FlowScore(FlowScoreConfig(width=32, depth=2, batch_mul=1, sample_steps=8, solver="midpoint"),
                     hidden_dim=HIDDEN, token_dim=2)
    opt = torch.optim.Adam(rule.parameters(), lr=3e-3)
    for _ in range(200):
        c = torch.randint(0, 2, (128,), generator=g)
        y = torch.where(c[:, None] == 0, truths[0].sample((128,), g), truths[1].sample((128,), g))
        loss = rule.loss(codes[c], y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, truth in enumerate(truths):
        drawn = rule.sample(codes[k].expand(1000, -1), generator=g)
        real, other = truth.sample((1000,), g), truth.sample((1000,), g)
        collapsed = real.mean(0) + real.std(0) * torch.randn(1000, 2, generator=g)  # right mean and spread, one mode
        learned, floor, unimodal = energy_distance(drawn, real), energy_distance(other, real), energy_distance(collapsed, real)
        assert learned < floor + 0.03 and learned < unimodal / 5, (k, learned, floor, unimodal)
        assert 0.4 < (drawn[:, 0] > 0).float().mean() < 0.6  # both modes, about equally
