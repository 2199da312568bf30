"""The forecasts a carl model must beat: two naive ones and two statistical ones (statsmodels).

All read only the first ``context`` steps of each window ``(B, length, C)`` and return sample
paths ``(S, B, horizon, C)`` in the original units (``S = 1`` for the point forecasts).

- **last value**: the last observation repeated (a random walk's point forecast).
- **seasonal naive**: the last season (4 quarters) repeated.
- **ETS**: exponential smoothing with additive errors, fitted by maximum likelihood per window
  and channel; the form is chosen by AICc among no trend (simple exponential smoothing), an
  additive trend and a damped additive trend (the series are seasonally adjusted, so no season).
  Sample paths are simulated from the fitted state-space model at the end of the window.
- **ARIMA**: ARMA with a constant, fitted per window and channel, orders chosen by AICc among
  AR(1), AR(2) and ARMA(1, 1); sample paths simulated from the fitted model.

Simulating paths, rather than reading off marginal intervals, gives the joint distribution over
the horizon that the energy score judges. Parameter uncertainty is not simulated (as in the usual
forecast intervals of these models).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from carl.errors import CarlError

ETS_FORMS = ({"trend": None}, {"trend": "add"}, {"trend": "add", "damped_trend": True})
ARIMA_ORDERS = ((1, 0, 0), (2, 0, 0), (1, 0, 1))


def last_value(windows: torch.Tensor, context: int) -> torch.Tensor:
    """The last observed value repeated over the horizon: ``(1, B, H, C)``."""
    horizon = windows.shape[1] - context
    return windows[:, context - 1 : context].expand(-1, horizon, -1)[None]


def seasonal_naive(windows: torch.Tensor, context: int, season: int = 4) -> torch.Tensor:
    """The last observed season repeated over the horizon: ``(1, B, H, C)``."""
    horizon = windows.shape[1] - context
    last_season = windows[:, context - season : context]
    return last_season.repeat(1, -(-horizon // season), 1)[:, :horizon][None]


def ets(windows: torch.Tensor, context: int, num_paths: int, seed: int = 0) -> torch.Tensor:
    """ETS sample paths ``(S, B, H, C)``, the form chosen per series by AICc (module doc)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    def fit(y: np.ndarray):
        return [ETSModel(y, error="add", **form).fit(disp=False) for form in ETS_FORMS]

    return _simulate_each(windows, context, num_paths, seed, fit, "ETS")


def arima(windows: torch.Tensor, context: int, num_paths: int, seed: int = 0) -> torch.Tensor:
    """ARIMA sample paths ``(S, B, H, C)``, the order chosen per series by AICc (module doc)."""
    from statsmodels.tsa.arima.model import ARIMA

    def fit(y: np.ndarray):
        return [ARIMA(y, order=order, trend="c").fit() for order in ARIMA_ORDERS]

    return _simulate_each(windows, context, num_paths, seed, fit, "ARIMA")


def _simulate_each(windows: torch.Tensor, context: int, num_paths: int, seed: int,
                   fit: Callable[[np.ndarray], list], name: str) -> torch.Tensor:
    past = windows[:, :context].double().numpy()  # (B, context, C)
    horizon = windows.shape[1] - context
    paths = np.empty((num_paths, len(past), horizon, past.shape[2]))
    rngs = np.random.default_rng(seed).spawn(past.shape[0] * past.shape[2])
    # One BLAS thread: these fits are tiny, and BLAS threads fighting over shared cores made them 10x slower.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on 24-point series; the AICc choice copes
        for b in range(past.shape[0]):
            for c in range(past.shape[2]):
                best = _best(fit, past[b, :, c], name, (b, c))
                draws = best.simulate(horizon, anchor="end", repetitions=num_paths, rng=rngs[b * past.shape[2] + c])
                paths[:, b, :, c] = np.asarray(draws).reshape(horizon, num_paths).T
    return torch.from_numpy(paths).float()


def _best(fit: Callable[[np.ndarray], list], y: np.ndarray, name: str, where: tuple[int, int]):
    """The fitted candidate with the lowest finite AICc."""
    try:
        fitted = [r for r in fit(y) if np.isfinite(r.aicc)]
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CarlError(f"{name} could not be fitted to window {where[0]}, channel {where[1]}: {exc}") from None
    if not fitted:
        raise CarlError(f"{name} could not be fitted to window {where[0]}, channel {where[1]} (no finite likelihood)")
    return min(fitted, key=lambda r: r.aicc)


BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "last value": lambda windows, context, num_paths, seed: last_value(windows, context),
    "seasonal naive": lambda windows, context, num_paths, seed: seasonal_naive(windows, context),
    "ETS": ets,
    "ARIMA": arima,
}
