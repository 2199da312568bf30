"""carl: the Continuous AutoRegression Library."""

__version__ = "0.1.0"

from carl.plugins import load_plugins, registry  # noqa: E402

__all__ = ["__version__", "load_plugins", "registry", "ContinuousAR", "RecipeConfig", "load_recipe"]


def __getattr__(name: str):
    # Lazy, so that `import carl` stays light and plugins can import carl's ABCs cheaply.
    if name == "ContinuousAR":
        from carl.model import ContinuousAR

        return ContinuousAR
    if name in ("RecipeConfig", "load_recipe"):
        from carl import config

        return getattr(config, name)
    raise AttributeError(name)
