"""carl plugin: probabilistic forecasting of time series (a pretrained forecaster of any series,
a benchmark against the statistical baselines, multivariate window models)."""

__version__ = "0.1.0"
__all__ = ["Forecaster"]


def __getattr__(name: str):
    if name == "Forecaster":  # imported on first use: loading the plugin stays light
        from carl_timeseries.pipeline import Forecaster

        return Forecaster
    raise AttributeError(f"module 'carl_timeseries' has no attribute {name!r}")
