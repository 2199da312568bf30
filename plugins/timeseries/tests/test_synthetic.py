"""The synthetic generators make series with the properties they claim (period, trend, noise
level, stationarity, mixtures of real windows), seeded and shaped as the training data needs."""

import numpy as np
import pytest
import torch

from carl_timeseries.pretrain import MixedWindows, PretrainConfig
from carl_timeseries.synthetic import _stationary, arima_paths, ets_paths, kernel_synth, tsmixup
from carl_timeseries.windows import SeriesBank, cut_past


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_periodic_kernels_repeat_with_their_period():
    x = kernel_synth(16, 96, gen(), max_kernels=1, kinds=("periodic",), periods=(12,)).double()
    assert torch.allclose(x[:, 12:], x[:, :-12], atol=0.05 * x.std().item())  # one period later: the same value
    assert not torch.allclose(x[:, 5:], x[:, :-5], atol=0.05 * x.std().item())


def test_linear_kernels_are_straight_lines_and_white_noise_has_its_level():
    line = kernel_synth(8, 64, gen(), max_kernels=1, kinds=("linear",)).double().numpy()
    t = np.arange(64)
    for row in line:
        fit = np.polyval(np.polyfit(t, row, 1), t)
        assert np.abs(row - fit).max() < 0.02 * (np.abs(row).max() + 1e-3) + 0.05  # jitter only
    noise = kernel_synth(64, 200, gen(), max_kernels=1, kinds=("white",)).std(1)
    levels = torch.tensor([0.01, 0.1, 0.3])
    nearest = levels[(noise[:, None] - levels).abs().argmin(1)]  # each row's std is one of the bank's levels
    assert torch.allclose(noise, torch.sqrt(nearest.square() + 1e-4), rtol=0.2)


def test_kernel_synth_is_seeded_finite_and_shaped():
    a, b = kernel_synth(6, 50, gen(3)), kernel_synth(6, 50, gen(3))
    assert a.shape == (6, 50) and a.dtype == torch.float32 and torch.isfinite(a).all() and torch.equal(a, b)


def test_ar_coefficients_from_partial_autocorrelations_are_stationary():
    pacf = torch.rand(200, 3, generator=gen(), dtype=torch.float64) * 1.98 - 0.99
    phi = _stationary(pacf).numpy()
    for row in phi:
        roots = np.roots(np.r_[1.0, -row])  # z^p - phi_1 z^(p-1) - ... : inside the unit circle
        assert np.abs(roots).max() < 1.0
    assert torch.allclose(_stationary(pacf[:, :1]), pacf[:, :1])  # AR(1): phi = the partial autocorrelation


def test_arima_differences_make_random_walks_and_stationary_paths_stay_bounded():
    stationary = arima_paths(256, 400, gen(), differences=(1.0, 0.0, 0.0), season_chance=0.0).double().numpy()
    walks = arima_paths(256, 400, gen(), differences=(0.0, 1.0, 0.0), season_chance=0.0).double().numpy()
    t = np.arange(400)
    stationary = stationary - np.polyval(np.polyfit(t, stationary.T, 1), t[:, None]).T  # d = 0 paths have a drift
    spread = lambda x, lag: (x[:, 50 + lag] - x[:, 50]).std()  # noqa: E731
    # a random walk's changes grow like the square root of the lag; a stationary path's do not
    assert spread(walks, 300) / spread(walks, 30) > 2.0
    assert spread(stationary, 300) / spread(stationary, 30) < 1.6


def test_ets_seasons_trends_and_noise_levels_are_as_asked():
    flat = ets_paths(64, 240, gen(), season_chance=0.0, trend_chance=0.0, noise=(0.05, 0.05)).double()
    # with no season or trend a path is a level plus errors: one-step changes keep the error spread
    relative = (flat.diff(dim=1) / flat[:, :-1]).std(1)
    assert relative.median().item() == pytest.approx(0.05 * np.sqrt(1.0 + 1.0), rel=0.5)
    seasonal = ets_paths(64, 240, gen(1), periods=(12,), season_chance=1.0, trend_chance=0.0, noise=(0.001, 0.001)).numpy()
    for row in seasonal:
        z = row - np.convolve(row, np.ones(12) / 12, mode="same")  # seasonal part: remove a 12-step moving mean
        z = z[12:-12]
        lags = [np.corrcoef(z[:-k], z[k:])[0, 1] for k in (3, 6, 12)]
        assert lags[2] > 0.8 and lags[2] > lags[0] and lags[2] > lags[1]
    slope = lambda x: np.median(np.abs(np.polyfit(np.arange(120), x.numpy().T, 1)[0]))  # noqa: E731
    trending = ets_paths(256, 120, gen(2), season_chance=0.0, trend_chance=1.0, noise=(0.001, 0.001))
    level = ets_paths(256, 120, gen(2), season_chance=0.0, trend_chance=0.0, noise=(0.001, 0.001))
    assert slope(trending) > 10 * slope(level)


def test_tsmixup_returns_standardised_convex_mixtures():
    base = torch.randn(1, 40, generator=gen()) * 7 + 3
    single = tsmixup(base.expand(5, -1).clone(), gen())
    expected = (base - base.mean()) / base.std()
    assert torch.allclose(single, expected.expand(5, -1), atol=1e-5)  # mixtures of one series: that series, standardised
    many = torch.randn(50, 40, generator=gen(1)) * torch.rand(50, 1, generator=gen(2)) * 10
    z = (many - many.mean(1, keepdim=True)) / many.std(1, keepdim=True)
    mixed = tsmixup(many, gen(3))
    assert (mixed <= z.max(0).values + 1e-5).all() and (mixed >= z.min(0).values - 1e-5).all()


def test_windows_are_cut_from_observed_steps_with_short_pasts_padded():
    series = [np.arange(100.0), np.arange(1000.0, 1040.0)]
    bank = SeriesBank(series, length=48, context=32, min_context=8)
    w = bank.windows(500, gen())
    assert w.shape == (500, 48)
    assert not torch.isnan(w[:, 32 - 8 :]).any()  # the forecast steps and min_context past steps are observed
    observed = w[~torch.isnan(w)]
    assert ((observed < 100) | (observed >= 1000)).all()
    steps = torch.nan_to_num(w.diff(dim=1), nan=1.0)
    assert (steps == 1.0).all()  # consecutive steps of one series, never across series
    assert torch.isnan(w[:, 0]).any()  # the short series' windows start before it: left-padded
    cut = cut_past(torch.zeros(400, 48), 32, 8, 1.0, gen())
    kept = (~torch.isnan(cut[:, :32])).sum(1)
    assert kept.min() >= 8 and kept.max() <= 32 and len(kept.unique()) > 10


def test_mixed_windows_are_generated_a_batch_at_a_time_and_reproducibly():
    config = PretrainConfig(context=32, horizon=16, items=1000, real_series="none")
    data = MixedWindows(config, None, {"kernel": 1.0, "arima": 1.0, "ets": 1.0})
    batch = data.__getitems__(list(range(10, 42)))
    assert len(batch) == 32 and batch[0]["data"].shape == (48, 1)
    again = data.__getitems__(list(range(10, 42)))
    assert all(torch.equal(a["data"], b["data"], ) if not torch.isnan(a["data"]).any() else
               torch.equal(torch.nan_to_num(a["data"], 7.0), torch.nan_to_num(b["data"], 7.0)) for a, b in zip(batch, again))
    stacked = torch.stack([b["data"][:, 0] for b in batch])
    assert not torch.isnan(stacked[:, 32:]).any() and torch.isfinite(torch.nan_to_num(stacked)).all()
