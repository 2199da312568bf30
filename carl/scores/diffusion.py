"""The Hyvarinen score through denoising score matching: MAR's diffusion loss."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Callable, Literal

import annotated_types as at
import torch
from torch import nn

from carl.errors import FieldError
from carl.ranges import check_ranges
from carl.scores.base import Guidance, ScoringRule
from carl.scores.generator import FinalLayer, ResBlock, init_adaln_mlp
from carl.scores.log_score import standard_normal

# A denoiser: (noisy tokens (M, D), timesteps (M,) or (1,), hidden (M, C)) -> (eps (M, D), variance logits (M, D)).
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DiffusionScoreConfig:
    """``depth``/``width``: the AdaLN MLP denoiser (MAR-B: 6 x 1024). ``train_steps``: the noise
    levels of training (1000). ``sample_steps``: the respaced levels of sampling (MAR: 100).
    ``schedule``: ``cosine`` (MAR) or ``linear`` betas. ``batch_mul``: repeats of each token, each
    with its own noise level and noise (MAR uses 4). ``clip_x0``: at sampling, clamp the
    predicted clean token to [-clip_x0, clip_x0] (ADM's ``clip_denoised``; MAR: None). The
    first respaced steps divide by sqrt(alpha_bar) ~ 5e-5, so a head trained briefly can blow
    up there; a bound of the data's range prevents it."""

    depth: Annotated[int, at.Ge(1)] = 3
    width: Annotated[int, at.Ge(1)] = 256
    train_steps: Annotated[int, at.Ge(1)] = 1000
    sample_steps: Annotated[int, at.Ge(2)] = 100  # 2 at least: one respaced step is no chain (MAR fails on it too)
    schedule: Literal["cosine", "linear"] = "cosine"
    batch_mul: Annotated[int, at.Ge(1)] = 4
    clip_x0: Annotated[float, at.Gt(0)] | None = None

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.sample_steps > self.train_steps:
            raise FieldError("sample_steps", f"{self.sample_steps} exceeds train_steps {self.train_steps}")


def betas_for(schedule: str, steps: int) -> torch.Tensor:
    """float64 betas: ``cosine`` (Nichol & Dhariwal 2021, s = 0.008, capped at 0.999) or ``linear``
    (Ho et al. 2020, scaled to ``steps``)."""
    if schedule == "linear":
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def respaced_timesteps(train_steps: int, sample_steps: int) -> torch.Tensor:
    """``sample_steps`` of the ``train_steps`` levels, evenly spread from the first to the last.

    Exactly MAR's (ADM's) ``space_timesteps`` with one section: the index advances by a float
    stride ``(train_steps - 1) / (sample_steps - 1)`` added up step by step and rounded half to
    even, so accumulated float error decides the ties as it does there; one step keeps level 0.
    """
    stride = 1.0 if sample_steps <= 1 else (train_steps - 1) / (sample_steps - 1)
    levels, index = [], 0.0
    for _ in range(sample_steps):
        levels.append(round(index))
        index += stride
    return torch.tensor(sorted(set(levels)))


class NoiseSchedule(nn.Module):
    """The tables of a discrete Gaussian diffusion over the levels ``timesteps`` of ``betas``.

    Keeping a subset of levels ("respacing") gives a shorter chain with the same marginals: the
    new betas are ``1 - alpha_bar[t_i] / alpha_bar[t_(i-1)]``. Tables are float32 buffers on the
    model's device (not saved), so the sampling loop indexes them without host round trips.
    """

    def __init__(self, betas: torch.Tensor, timesteps: torch.Tensor | None = None):
        super().__init__()
        alpha_bar = torch.cumprod(1 - betas, 0)
        if timesteps is not None:
            alpha_bar = alpha_bar[timesteps]
            betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        else:
            timesteps = torch.arange(len(betas))
        prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        posterior_var = betas * (1 - prev) / (1 - alpha_bar)
        # The posterior variance is 0 at the first level: clip its log to the next value (ADM).
        posterior_log_var = torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]]))
        tables = {
            "timesteps": timesteps,  # the training level each step stands for (the denoiser's input)
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "sqrt_recip_alpha_bar": (1 / alpha_bar).sqrt(),
            "sqrt_recip_m1_alpha_bar": (1 / alpha_bar - 1).sqrt(),
            "posterior_mean_x0": betas * prev.sqrt() / (1 - alpha_bar),
            "posterior_mean_xt": (1 - prev) * (1 - betas).sqrt() / (1 - alpha_bar),
            "posterior_log_var": posterior_log_var,
            "log_beta": torch.log(betas),
        }
        for name, value in tables.items():
            self.register_buffer(name, value if name == "timesteps" else value.float(), persistent=False)
        self.steps = reverse_step_coefficients(tables)

    def __len__(self) -> int:
        return len(self.timesteps)

    def at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at steps ``t``, shaped to broadcast over token values."""
        return getattr(self, name)[t][..., None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.at("sqrt_alpha_bar", t) * x0 + self.at("sqrt_one_minus_alpha_bar", t) * noise

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_(t-1) | x_t, x_0)."""
        return self.at("posterior_mean_x0", t) * x0 + self.at("posterior_mean_xt", t) * xt

    def p_mean_log_var(self, xt, t, eps, var_logits, clip_x0: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's reverse step: mean from the predicted noise (through the predicted clean
        token, optionally clamped), log-variance interpolated in log space between the
        posterior's and beta's by ``(v + 1) / 2`` (learned range, Nichol & Dhariwal 2021)."""
        x0 = self.at("sqrt_recip_alpha_bar", t) * xt - self.at("sqrt_recip_m1_alpha_bar", t) * eps
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        frac = (var_logits + 1) / 2
        log_var = frac * self.at("log_beta", t) + (1 - frac) * self.at("posterior_log_var", t)
        return self.posterior(x0, xt, t), log_var


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the level (cos then sin, 256 of them) through a two-layer MLP."""

    def __init__(self, width: int, frequencies: int = 256, max_period: float = 10_000.0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))
        half = frequencies // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].float() * self.freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class MLPDenoiser(nn.Module):
    """MAR's ``SimpleMLPAdaLN``: the noisy token runs through the residual stream; the level and
    the hidden state (``time_embed + cond_embed``) modulate every block through AdaLN. Outputs
    the predicted noise and the variance logits. Parameter names follow MAR's ``diffloss.net``."""

    def __init__(self, *, hidden_dim: int, width: int, depth: int, token_dim: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(hidden_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * token_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_adaln_mlp(self)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)

    def condition(self, hidden: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The AdaLN input; ``t`` of shape ``(1,)`` is embedded once and broadcast."""
        return self.time_embed(t) + self.cond_embed(hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y, 1.0)
        return self.final_layer(x, y).chunk(2, dim=-1)


@dataclass(frozen=True)
class ReverseStep:
    """One reverse step's coefficients as Python floats (from the float64 tables), so that the
    sampler applies them as kernel scalars: no table lookups on the device, fewer kernels.

    ``x0 = x0_x * x - x0_eps * eps``; ``mean = mean_x0 * x0 + mean_x * x`` (folded into
    ``mean = direct_x * x - direct_eps * eps`` when x0 is not clipped); the learned-range
    standard deviation is ``exp(std_0 + std_v * v)`` for variance logits ``v``."""

    x0_x: float
    x0_eps: float
    mean_x0: float
    mean_x: float
    direct_x: float
    direct_eps: float
    std_0: float
    std_v: float


def reverse_step_coefficients(tables: dict[str, torch.Tensor]) -> list[ReverseStep]:
    """The :class:`ReverseStep` of every step of a schedule's float64 ``tables``. The log-variance
    ``(v + 1) / 2 * log_beta + (1 - (v + 1) / 2) * posterior_log_var`` is rewritten as
    ``a + b v``, halved for the standard deviation."""
    columns = ("sqrt_recip_alpha_bar", "sqrt_recip_m1_alpha_bar", "posterior_mean_x0", "posterior_mean_xt",
               "log_beta", "posterior_log_var")
    steps = []
    for a, b, c, d, log_beta, post in zip(*(tables[name].double().tolist() for name in columns)):
        steps.append(ReverseStep(x0_x=a, x0_eps=b, mean_x0=c, mean_x=d, direct_x=c * a + d, direct_eps=c * b,
                                 std_0=(log_beta + post) / 4, std_v=(log_beta - post) / 4))
    return steps


def normal_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)), elementwise."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF that ADM and MAR use."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) under N(mean, exp(log_scale)^2) with bins of width 2/255 on [-1, 1], the
    edge bins open to infinity, elementwise in nats (ADM's decoder likelihood, which MAR keeps
    for the t = 0 term of its diffusion loss even though tokens are not 8-bit values)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class DiffusionScore(ScoringRule):
    r"""The Hyvarinen score through denoising score matching (MAR's diffusion loss, Li et al. 2024;
    the score-rule view: EAR, section 3; Hyvarinen 2005, Vincent 2011).

    The head is a denoiser eps(x_t, t, h) of the token's diffusion. Its loss per token is

        mean_d (eps - eps_hat(sqrt(abar_t) y + sqrt(1 - abar_t) eps, t, h))^2  +  L_vb,

    with t uniform over ``train_steps`` levels of a cosine schedule and eps ~ N(0, I). The first
    term is denoising score matching: eps_hat estimates -sqrt(1 - abar_t) grad log p_t, and its
    expectation equals, up to a constant, the Hyvarinen score of the noised model, which is proper
    (strictly at every noise level > 0). L_vb (Nichol & Dhariwal's hybrid loss) trains only the
    learned-range variance: the KL of the reverse step with the mean frozen, in bits per value
    (at t = 0 the discretised Gaussian likelihood of ADM and MAR, bins of 2/255).

    Sampling runs ``sample_steps`` respaced ancestral steps from N(0, I); the temperature scales
    the noise of every step (MAR); guidance is applied to the noise prediction at every step,
    ``eps = eps_u + s (eps_c - eps_u)``, with the conditional variance.
    """

    Config = DiffusionScoreConfig

    def __init__(self, config: DiffusionScoreConfig, *, hidden_dim: int, token_dim: int):
        super().__init__()
        self.config = config
        self.net = MLPDenoiser(hidden_dim=hidden_dim, width=config.width, depth=config.depth, token_dim=token_dim)
        with torch.device("cpu"):  # the host-side step coefficients need real numbers, even when built on "meta"
            betas = betas_for(config.schedule, config.train_steps)
            self.train_schedule = NoiseSchedule(betas)
            self.sample_schedule = NoiseSchedule(betas, respaced_timesteps(config.train_steps, config.sample_steps))

    def set_sampler(self, *, sample_steps: int | None = None) -> None:
        """Sample a trained head with another number of respaced steps (no retraining); the value
        is checked like a recipe's (at least 1, at most ``train_steps``)."""
        if sample_steps is None:
            return
        config = replace(self.config, sample_steps=sample_steps)
        device = self.sample_schedule.timesteps.device
        with torch.device("cpu"):
            betas = betas_for(config.schedule, config.train_steps)
            schedule = NoiseSchedule(betas, respaced_timesteps(config.train_steps, config.sample_steps))
        self.config, self.sample_schedule = config, schedule.to(device)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r = self.config.batch_mul
        hidden, target = hidden.repeat(r, 1), target.float().repeat(r, 1)
        t, noise = self.draw_levels(target), torch.randn_like(target)
        losses = self.denoising_loss(lambda xt, t: self.net(xt, self.net.condition(hidden, t)), target, t, noise)
        return losses.view(r, -1).mean(0)

    def draw_levels(self, target: torch.Tensor) -> torch.Tensor:
        """One training noise level per row, uniform over the schedule."""
        return torch.randint(0, len(self.train_schedule), (target.shape[0],), device=target.device)

    def denoising_loss(self, denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Per-row ``mse + vb`` of ``denoiser`` on clean tokens ``x0 (M, D)`` at levels ``t (M,)``."""
        schedule = self.train_schedule
        noise = torch.randn_like(x0) if noise is None else noise
        xt = schedule.q_sample(x0, t, noise)
        eps, var_logits = denoiser(xt, t)
        eps, var_logits = eps.float(), var_logits.float()
        mse = (noise - eps).square().mean(-1)
        # The variance term sees the mean through a stop-gradient: only the MSE trains the mean.
        mean, log_var = schedule.p_mean_log_var(xt, t, eps.detach(), var_logits)
        true_mean = schedule.posterior(x0, xt, t)
        kl = normal_kl(true_mean, schedule.at("posterior_log_var", t), mean, log_var).mean(-1)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(-1)
        return mse + torch.where(t == 0, nll, kl) / math.log(2.0)

    @torch.no_grad()
    def sample(self, hidden, *, temperature=1.0, guidance: Guidance | None = None, generator=None):
        rows = hidden.shape[0]
        if guidance is not None:  # conditional rows first; both halves denoise the same x (MAR)
            hidden = torch.cat([hidden, guidance.uncond])
        cond = self.net.cond_embed(hidden)  # once per token, not once per denoising step
        levels = self.net.time_embed(self.sample_schedule.timesteps)  # every level at once: (steps, W)

        def denoise(x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            eps, var_logits = self.net(x if guidance is None else x.repeat(2, 1), cond + levels[step])
            if guidance is None:
                return eps, var_logits
            cond_eps, uncond_eps = eps.chunk(2)
            return torch.lerp(uncond_eps, cond_eps, guidance.scale), var_logits[:rows]  # eps_u + s (eps_c - eps_u)

        noise = standard_normal((rows, self.net.input_proj.in_features), hidden, generator).to(hidden.dtype)
        return self._reverse(denoise, noise, temperature, generator)

    def reverse(self, denoiser: Denoiser, x: torch.Tensor, temperature: float = 1.0, generator=None) -> torch.Tensor:
        """Run the respaced reverse chain from ``x`` (pure noise) with ``denoiser(x, level)``,
        ``level`` the ``(1,)`` training level each step stands for."""
        levels = self.sample_schedule.timesteps
        return self._reverse(lambda x, step: denoiser(x, levels[step : step + 1]), x, temperature, generator)

    def _reverse(self, denoiser, x: torch.Tensor, temperature: float, generator) -> torch.Tensor:
        """The chain with ``denoiser(x, step index)``. Each step is the denoiser plus about eight
        elementwise kernels with host-side scalar coefficients (:class:`ReverseStep`): no table
        lookups, nothing that waits on the device."""
        clip = self.config.clip_x0
        for i in reversed(range(len(self.sample_schedule))):
            c = self.sample_schedule.steps[i]
            eps, var_logits = denoiser(x, i)
            xf, eps = x.float(), eps.float()
            if clip is None:
                mean = xf.mul(c.direct_x).sub_(eps, alpha=c.direct_eps)
            else:
                x0 = xf.mul(c.x0_x).sub_(eps, alpha=c.x0_eps).clamp_(-clip, clip)
                mean = x0.mul_(c.mean_x0).add_(xf, alpha=c.mean_x)
            if i > 0:
                noise = standard_normal(x.shape, x, generator)
                std = var_logits.float().mul(c.std_v).add_(c.std_0).exp_()
                mean = mean.addcmul_(std, noise.float(), value=temperature)
            x = mean.to(x.dtype)
        return x.float()
