"""Helpers of the scoring-rule tests: weights moved off their initialisation, EAR's and MAR's AdaLN
MLPs recomputed from the parameter names, and known distributions to score."""

from __future__ import annotations

import torch

from carl.scores.log_score import mixture_log_density


def trained_like(rule):
    """Zero-initialised output layers hide gradients at step 0: perturb every weight a little."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return rule


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Replace every weight (zero-initialised ones included) by N(0, std^2) draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))
    return module


# ---------------------------------------------------------------------------------------------
# The AdaLN MLPs of EAR and MAR, recomputed here from the parameter names


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


# ---------------------------------------------------------------------------------------------
# Known distributions: propriety (the truth scores best) and the reverse chain


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


    def velocity(self, x, t):
        """E[y - z | x_t = x] for x_t = (1 - t) z + t y: per component, (y, z, x_t) are jointly
        Gaussian, x_t | k ~ N(t m_k, var_k) with var_k = t^2 s_k^2 + (1 - t)^2, and
        E[y - z | x, k] = m_k + (t s_k^2 - (1 - t)) (x - t m_k) / var_k; the components are
        weighted by their posterior responsibility at x."""
        x, t = x.double(), t.double().expand(x.shape[0])[:, None]  # (M, D), (M, 1)
        var = t**2 * self.s**2 + (1 - t) ** 2  # (M, K)
        diff = x[:, None] - t[..., None] * self.m  # (M, K, D)
        log_r = self.w.log() - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.m.shape[1] * var.log()
        r = log_r.softmax(-1)[..., None]
        per_component = self.m + (t * self.s**2 - (1 - t))[..., None] * diff / var[..., None]
        return (r * per_component).sum(1).float()

TWO_MODES = Mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 1.0]], [0.4, 0.6])  # 2-D, bimodal
SKEWED = Mixture([0.8, 0.2], [[0.0], [2.0]], [0.5, 1.0])  # 1-D, right-skewed
TRUTHS = {"two-modes": TWO_MODES, "skewed": SKEWED}


def alternatives(p: Mixture) -> dict[str, Mixture]:
    return {"shifted": p.shifted(0.5), "wider": p.rescaled(1.6), "narrower": p.rescaled(0.5), "one-mode": p.mode_dropped()}
