"""Flow matching: a velocity field regressed on straight noise-to-token paths (rectified flow)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Callable, Literal

import annotated_types as at
import torch
from torch import nn

from carl.errors import FieldError
from carl.ranges import check_ranges
from carl.scores.base import Guidance, ScoringRule
from carl.scores.diffusion import TimestepEmbedder
from carl.scores.generator import FinalLayer, ResBlock, init_adaln_mlp
from carl.scores.log_score import standard_normal

SOLVERS = ("euler", "midpoint")
TIME_SCALE = 1000.0  # t in [0, 1] reaches the sinusoidal embedding as 0..1000, the diffusion head's range of levels

# A velocity field: (points (M, D), time (M,) or (1,)) -> velocity (M, D).
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FlowScoreConfig:
    """``depth``/``width``: the AdaLN MLP velocity network (the diffusion head's block design).
    ``batch_mul``: repeats of each token, each with its own time and noise (as diffusion's).
    ``sample_steps``: ODE steps from noise to token at sampling; ``solver``: ``euler`` (one
    network call per step) or ``midpoint`` (two calls per step, second order). Both are sampler
    options: a trained head samples with any of them (:meth:`FlowScore.set_sampler`; in a recipe,
    ``model.score.sample_steps``). ``time_sampling``: the training times, ``uniform`` on [0, 1]
    (rectified flow) or ``logit_normal`` (sigmoid of a standard normal, Esser et al. 2024: more
    weight on the middle of the path)."""

    depth: Annotated[int, at.Ge(1)] = 3
    width: Annotated[int, at.Ge(1)] = 256
    batch_mul: Annotated[int, at.Ge(1)] = 4
    sample_steps: Annotated[int, at.Ge(1)] = 25
    solver: Literal["euler", "midpoint"] = "euler"
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.solver not in SOLVERS:  # a recipe's Literal is checked at load; this guards replace() too
            raise FieldError("solver", f"{self.solver!r} is not one of {', '.join(SOLVERS)}")


class VelocityMLP(nn.Module):
    """The diffusion head's AdaLN MLP (:class:`carl.scores.diffusion.MLPDenoiser`'s layout) with one
    output, the velocity: the point ``x_t`` runs through the residual stream; the time and the
    hidden state (``time_embed + cond_embed``) modulate every block through AdaLN."""

    def __init__(self, *, hidden_dim: int, width: int, depth: int, token_dim: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(hidden_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, token_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_adaln_mlp(self)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)

    def condition(self, hidden: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The AdaLN input for times ``t`` in [0, 1] (``(M,)``, or ``(1,)`` broadcast)."""
        return self.time_embed(t * TIME_SCALE) + self.cond_embed(hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y, 1.0)
        return self.final_layer(x, y)


class FlowScore(ScoringRule):
    r"""Conditional flow matching on the rectified-flow path (Lipman et al. 2023; Liu et al. 2023;
    the per-token head of NextStep-1 and of autoregressive flow models).

    Noise z ~ N(0, I) and the token y are joined by the straight path x_t = (1 - t) z + t y,
    whose velocity is y - z. The head v(x_t, t, h) regresses it; the loss per token is

        mean_d (v(x_t, t, h) - (y - z))^2,    t ~ U[0, 1] (or logit-normal),

    an unbiased estimate of the conditional flow-matching loss. Its minimiser is the marginal
    velocity u_t(x) = E[y - z | x_t = x], the field whose ODE dx/dt = u_t(x) carries N(0, I) at
    t = 0 to the token's distribution p(y | h) at t = 1; the loss equals the regression onto
    u_t plus a constant that does not depend on v (Lipman et al., Theorem 2).

    What it estimates, against the diffusion head: on this Gaussian path the velocity is an affine
    function of the noised distribution's score, u_t(x) = (x + (1 - t) grad log p_t(x)) / t, so
    regressing the velocity is denoising score matching (the diffusion head's Hyvarinen score,
    Vincent 2011) under another weighting of the noise levels and another parametrisation; the
    expected loss, as a function of the predicted field, is minimised only by the true field, and
    read as a score of the predictive distribution p(. | h) that the field defines, it is proper
    in the same sense as the diffusion head's: the true distribution's field has the lowest
    expected loss (``tests/test_flow.py`` checks it by Monte Carlo on known mixtures). Like the
    diffusion loss it is not the log score of the sampled distribution: sampling integrates the
    ODE with finite steps, so the samples follow p only up to the solver's error.

    Sampling integrates dx/dt = v from t = 0 to 1 in ``sample_steps`` uniform steps (``euler`` or
    ``midpoint``). The temperature scales the initial noise: x_0 = temperature * z. For a
    Gaussian token the flow map is affine, so this scales the standard deviation around the mean
    exactly; for a mixture it draws the samples toward the modes' centres. Guidance mixes the
    velocities at every evaluation, v = v_u + s (v_c - v_u) (classifier-free guidance on the
    velocity, as for diffusion's noise prediction; s = 1 is none).
    """

    Config = FlowScoreConfig

    def __init__(self, config: FlowScoreConfig, *, hidden_dim: int, token_dim: int):
        super().__init__()
        self.config = config
        self.token_dim = token_dim
        self.net = VelocityMLP(hidden_dim=hidden_dim, width=config.width, depth=config.depth, token_dim=token_dim)

    def set_sampler(self, *, sample_steps: int | None = None, solver: str | None = None) -> None:
        """Change the sampler of a trained head (no retraining); values are checked like a recipe's."""
        changes = {"sample_steps": sample_steps, "solver": solver}
        self.config = replace(self.config, **{k: v for k, v in changes.items() if v is not None})

    def draw_times(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """One training time per row in [0, 1]."""
        if self.config.time_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(rows, device=like.device))
        return torch.rand(rows, device=like.device)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r = self.config.batch_mul
        hidden, target = hidden.repeat(r, 1), target.float().repeat(r, 1)
        t, noise = self.draw_times(target.shape[0], target), torch.randn_like(target)
        losses = self.flow_matching_loss(lambda x, t: self.net(x, self.net.condition(hidden, t)), target, t, noise)
        return losses.view(r, -1).mean(0)

    @staticmethod
    def flow_matching_loss(velocity: Velocity, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-row ``mean_d (v(x_t, t) - (y - noise))^2`` at ``x_t = (1 - t) noise + t y``."""
        xt = torch.lerp(noise, y, t[:, None].to(y.dtype))
        return (velocity(xt.to(y.dtype), t).float() - (y - noise)).square().mean(-1)

    @torch.no_grad()
    def sample(self, hidden, *, temperature=1.0, guidance: Guidance | None = None, generator=None):
        rows = hidden.shape[0]
        if guidance is not None:  # conditional rows first; both halves move the same points
            hidden = torch.cat([hidden, guidance.uncond])
        cond = self.net.cond_embed(hidden)  # once per token, not once per ODE evaluation

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = self.net(x if guidance is None else x.repeat(2, 1), cond + self.net.time_embed(t * TIME_SCALE))
            if guidance is None:
                return v
            v_cond, v_uncond = v.chunk(2)
            return torch.lerp(v_uncond, v_cond, guidance.scale)  # v_u + s (v_c - v_u)

        noise = standard_normal((rows, self.token_dim), hidden, generator).to(hidden.dtype)
        return self.integrate(velocity, temperature * noise)

    def integrate(self, velocity: Velocity, x: torch.Tensor) -> torch.Tensor:
        """Solve dx/dt = velocity(x, t) from t = 0 (``x``) to t = 1 with the configured steps and
        solver; ``t`` reaches ``velocity`` as a ``(1,)`` tensor. Returns float32."""
        steps, solver = self.config.sample_steps, self.config.solver
        times = torch.linspace(0.0, 1.0, steps + 1, device=x.device, dtype=torch.float32)
        dt = 1.0 / steps
        for i in range(steps):
            t = times[i : i + 1]
            v = velocity(x, t)
            if solver == "midpoint":
                v = velocity(x + 0.5 * dt * v.to(x.dtype), t + 0.5 * dt)
            x = x + dt * v.to(x.dtype)
        return x.float()
