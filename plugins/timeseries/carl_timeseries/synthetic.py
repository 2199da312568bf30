"""Synthetic series generated on the fly, a batch at a time (vectorised over the batch; loops run
over time steps or kernel slots only), each seeded by a ``torch.Generator``.

- :func:`kernel_synth`: Gaussian-process series whose kernel is a random composition (sums and
  products) of 1-5 kernels drawn from a bank of linear, RBF, rational quadratic, periodic
  (periods of the usual calendars), constant and white-noise kernels: KernelSynth (Ansari et
  al. 2024, *Chronos*).
- :func:`arima_paths`: seasonal ARIMA paths, stationary AR and invertible MA parts drawn through
  their partial autocorrelations, 0-2 differences, an optional seasonal AR term.
- :func:`ets_paths`: exponential-smoothing state-space paths (level, damped or plain trend,
  seasonal component of a calendar period), additive or multiplicative errors and season.
- :func:`tsmixup`: convex combinations (Dirichlet weights) of standardised windows of real series
  (TSMixup, also from Chronos).

Every generator returns ``(B, length)`` float32 series in their own (arbitrary) units; the
tokenizer standardises each window by its past.
"""

from __future__ import annotations

import math

import torch

PERIODS = (4, 7, 12, 24, 52, 5, 14, 30, 365)  # quarters, days of a week, months, hours, weeks, ...


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def _choice(n: int, options, g: torch.Generator) -> torch.Tensor:
    options = torch.as_tensor(options, dtype=torch.float64)
    return options[torch.randint(len(options), (n,), generator=g)]


# ---------------------------------------------------------------------------------------------
# KernelSynth

KERNELS = ("linear", "rbf", "rational", "periodic", "constant", "white")


def _kernel(kind: str, t: torch.Tensor, n: int, length: int, g: torch.Generator, periods=PERIODS) -> torch.Tensor:
    """``n`` random kernels of one kind on the time grid ``t (L,)`` in [0, 1]: ``(n, L, L)``."""
    d = t[:, None] - t[None, :]
    if kind == "linear":
        c = _uniform(n, 0.0, 1.0, g)[:, None, None]
        return _uniform(n, 0.0, 1.0, g)[:, None, None] + (t[None, :, None] - c) * (t[None, None, :] - c)
    if kind == "rbf":
        scale = _choice(n, (0.02, 0.05, 0.1, 0.3, 1.0), g)[:, None, None]
        return torch.exp(-0.5 * d.square()[None] / scale.square())
    if kind == "rational":
        scale = _choice(n, (0.05, 0.1, 0.3, 1.0), g)[:, None, None]
        alpha = _choice(n, (0.5, 1.0, 2.0), g)[:, None, None]
        return (1 + d.square()[None] / (2 * alpha * scale.square())).pow(-alpha)
    if kind == "periodic":
        period = _choice(n, periods, g)[:, None, None] / length  # in units of the window
        scale = _choice(n, (0.5, 1.0, 2.0), g)[:, None, None]
        return torch.exp(-2 * torch.sin(math.pi * d.abs()[None] / period).square() / scale.square())
    if kind == "constant":
        return _uniform(n, 0.1, 1.0, g)[:, None, None].expand(n, len(t), len(t)).clone()
    noise = _choice(n, (0.01, 0.1, 0.3), g)[:, None, None]
    return noise.square() * torch.eye(len(t), dtype=torch.float64)[None]


def kernel_synth(batch: int, length: int, g: torch.Generator, max_kernels: int = 5, kinds: tuple[str, ...] = KERNELS,
                 periods: tuple[int, ...] = PERIODS) -> torch.Tensor:
    """``(batch, length)`` Gaussian-process draws with random composed kernels (module doc);
    ``kinds`` and ``periods`` restrict the bank (tests check each kind's signature)."""
    t = torch.arange(length, dtype=torch.float64) / length  # one step = 1 / length: periods in whole steps
    count = torch.randint(1, max_kernels + 1, (batch,), generator=g)
    cov = None
    for slot in range(max_kernels):
        picked = torch.randint(len(kinds), (batch,), generator=g)
        k = torch.empty(batch, length, length, dtype=torch.float64)
        for i, kind in enumerate(kinds):
            rows = (picked == i).nonzero().squeeze(1)
            if len(rows):
                k[rows] = _kernel(kind, t, len(rows), length, g, periods)
        if cov is None:
            cov = k
            continue
        active = slot < count
        product = torch.rand(batch, generator=g) < 0.5
        # in place, on the rows that change only: two full-size torch.where's cost 2/3 of the time
        times, plus = (active & product).nonzero().squeeze(1), (active & ~product).nonzero().squeeze(1)
        cov[times] *= k[times]
        cov[plus] += k[plus]
    cov = cov + 1e-4 * torch.eye(length, dtype=torch.float64)
    chol, _ = torch.linalg.cholesky_ex(cov)
    draws = (chol @ torch.randn(batch, length, 1, generator=g, dtype=torch.float64)).squeeze(-1)
    return torch.nan_to_num(draws).float()


# ---------------------------------------------------------------------------------------------
# ARIMA and ETS paths


def _stationary(pacf: torch.Tensor) -> torch.Tensor:
    """AR coefficients ``(n, p)`` of a stationary process from partial autocorrelations in (-1, 1)
    (the Durbin-Levinson recursion; also gives invertible MA coefficients)."""
    n, p = pacf.shape
    phi = torch.zeros(n, 0, dtype=pacf.dtype)
    for k in range(p):
        r = pacf[:, k : k + 1]
        phi = torch.cat([phi - r * phi.flip(1), r], dim=1)
    return phi


def arima_paths(batch: int, length: int, g: torch.Generator, burn_in: int = 50,
                differences: tuple[float, float, float] = (0.45, 0.45, 0.1), season_chance: float = 0.5) -> torch.Tensor:
    """``(batch, length)`` seasonal ARIMA(p, d, q)(1, 0, 0)_s paths with random orders (module doc):
    ``d`` = 0, 1, 2 with the chances ``differences``; a seasonal AR factor with chance ``season_chance``."""
    p, q = 3, 2
    order_p = torch.randint(0, p + 1, (batch, 1), generator=g)
    order_q = torch.randint(0, q + 1, (batch, 1), generator=g)
    ar = _stationary(_uniform(batch * p, -0.9, 0.9, g).view(batch, p) * (torch.arange(p) < order_p))
    ma = _stationary(_uniform(batch * q, -0.8, 0.8, g).view(batch, q) * (torch.arange(q) < order_q))
    season = _choice(batch, (4, 7, 12, 52), g).long()
    seasonal_ar = _uniform(batch, 0.3, 0.95, g) * (torch.rand(batch, generator=g, dtype=torch.float64) < season_chance)
    total = length + burn_in
    shocks = torch.randn(batch, total, generator=g, dtype=torch.float64)
    x = torch.zeros(batch, total, dtype=torch.float64)
    for t in range(total):  # the ARMA part
        value = shocks[:, t].clone()
        for i in range(min(p, t)):
            value += ar[:, i] * x[:, t - 1 - i] + (ma[:, i] * shocks[:, t - 1 - i] if i < q else 0.0)
        x[:, t] = value
    y = x.clone()
    rows = torch.arange(batch)
    for t in range(1, total):  # then the seasonal AR factor (1 - S B^s): stationary as both factors are
        back = t - season
        y[:, t] += torch.where(back >= 0, seasonal_ar * y[rows, back.clamp_min(0)], torch.zeros(batch, dtype=torch.float64))
    y = y[:, burn_in:]
    d = torch.multinomial(torch.tensor(differences), batch, replacement=True, generator=g)
    once = torch.cumsum(y, dim=1)
    twice = torch.cumsum(once, dim=1)
    y = torch.where((d == 0)[:, None], y, torch.where((d == 1)[:, None], once, twice))
    drift = _uniform(batch, -0.3, 0.3, g)[:, None] * torch.arange(length, dtype=torch.float64) * (d == 0)[:, None]
    return (y + drift).float()


def ets_paths(batch: int, length: int, g: torch.Generator, periods: tuple[int, ...] = (4, 7, 12, 52, 24),
              season_chance: float = 0.7, trend_chance: float = 0.6, noise: tuple[float, float] = (0.01, 0.15)) -> torch.Tensor:
    """``(batch, length)`` ETS paths (module doc): a season of one of ``periods`` with chance
    ``season_chance``, a (plain or damped) trend with chance ``trend_chance``, errors of relative
    spread drawn from ``noise``; additive or multiplicative errors and season."""
    f64 = torch.float64
    alpha = _uniform(batch, 0.05, 0.9, g)
    beta = alpha * _uniform(batch, 0.0, 0.3, g) * (torch.rand(batch, generator=g, dtype=f64) < trend_chance)
    gamma = (1 - alpha) * _uniform(batch, 0.0, 0.4, g)
    phi = torch.where(torch.rand(batch, generator=g, dtype=f64) < 0.5, _uniform(batch, 0.8, 0.98, g), torch.ones(batch, dtype=f64))
    period = _choice(batch, periods, g).long()
    seasonal = torch.rand(batch, generator=g, dtype=f64) < season_chance
    multiplicative = torch.rand(batch, generator=g, dtype=f64) < 0.4
    sigma = _uniform(batch, *noise, g)
    level = torch.ones(batch, dtype=f64) * 10
    trend = _uniform(batch, -0.05, 0.08, g) * (beta > 0)
    # a random seasonal shape of each period: Fourier terms with decaying amplitudes, mean zero
    top = int(max(periods))
    phase = torch.arange(top, dtype=f64)[None] / period[:, None]
    shape = sum(torch.randn(batch, 1, generator=g, dtype=f64) / k * torch.sin(2 * math.pi * k * phase
                + _uniform(batch, 0, 2 * math.pi, g)[:, None]) for k in (1, 2, 3))
    shape = shape * _uniform(batch, 0.05, 0.4, g)[:, None] * seasonal[:, None]
    states = shape.clone()  # s_t for t = 0..period-1, read cyclically
    rows = torch.arange(batch)
    y = torch.empty(batch, length, dtype=f64)
    for t in range(length):
        slot = t % period
        s = states[rows, slot]
        base = level + phi * trend
        mean = torch.where(multiplicative, base * (1 + s), base + s * level)
        e = sigma * torch.randn(batch, generator=g, dtype=f64)
        error = torch.where(multiplicative, mean * e, level.abs().clamp_min(1e-3) * e)
        y[:, t] = mean + error
        relative = error / mean.abs().clamp_min(1e-6)
        new_level = base + alpha * torch.where(multiplicative, base * relative, error)
        trend = phi * trend + beta * torch.where(multiplicative, base * relative, error) / level.abs().clamp_min(1e-3)
        states[rows, slot] = s + gamma * torch.where(multiplicative, relative, error / level.abs().clamp_min(1e-3))
        level = new_level
    return y.float()


# ---------------------------------------------------------------------------------------------
# TSMixup


def tsmixup(windows: torch.Tensor, g: torch.Generator, max_mixed: int = 3) -> torch.Tensor:
    """Convex mixtures of ``1..max_mixed`` rows of ``windows (N, L)`` (real series, NaN-free),
    each standardised first; ``(N, L)`` mixtures, one per row."""
    n = windows.shape[0]
    z = (windows - windows.mean(1, keepdim=True)) / windows.std(1, keepdim=True).clamp_min(1e-6)
    k = torch.randint(1, max_mixed + 1, (n, 1), generator=g)
    picks = torch.randint(n, (n, max_mixed), generator=g)
    weights = -torch.log(torch.rand(n, max_mixed, generator=g).clamp_min(1e-12))  # normalised: Dirichlet(1, ..., 1)
    weights = weights * (torch.arange(max_mixed) < k)
    weights = weights / weights.sum(1, keepdim=True)
    return torch.einsum("nk,nkl->nl", weights, z[picks])
