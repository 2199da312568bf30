"""Kernel scores (:mod:`carl.scores.kernel`): the documented kernels exactly, and the score of point
masses and of several targets against its closed form."""

import math

import pytest
import torch

from carl.scores import EnergyScore, EnergyScoreConfig, KernelScore, KernelScoreConfig

HIDDEN = 4


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


def test_linear_kernel_score_over_several_targets():
    rule = kernel_rule("linear")
    draws = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 1.0]], [[3.0, 1.0], [0.0, 2.0], [1.0, 1.0]]])  # (M=2, T=3, D=2)
    y = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    x1, x2 = draws
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    expected = 0.5 * dot(x1, x2) - 0.5 * (dot(x1, y) + dot(x2, y)) + 0.5 * dot(y, y)  # = |mean x - y|^2 / 2 - |x1 - x2|^2 / 8
    torch.testing.assert_close(rule.score_draws(draws, y), expected)


def test_energy_kernel_score_is_the_energy_score():
    torch.manual_seed(0)
    kernel = KernelScore(KernelScoreConfig(kernel="energy", alpha=1.3, width=16, noise_dim=4), hidden_dim=4, token_dim=3)
    energy = EnergyScore(EnergyScoreConfig(alpha=1.3, width=16, noise_dim=4), hidden_dim=4, token_dim=3)
    draws, y = torch.randn(4, 7, 3), torch.randn(7, 3)
    torch.testing.assert_close(kernel.score_draws(draws, y), energy.score_draws(draws, y))
