"""carl plugin: probabilistic forecasting of multivariate time series."""

__version__ = "0.1.0"
