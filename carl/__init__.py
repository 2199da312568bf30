"""carl: the Continuous AutoRegression Library.

The Python API (see docs/python.md)::

    import carl
    folder = carl.train("tiny", {"train.max_steps": 100}, output="runs/my-tiny")
    model = carl.ContinuousAR.from_pretrained(folder)
    samples = model.generate(torch.arange(4), num_steps=8)
"""

from carl.plugins import load_plugins, registry
from carl.version import __version__

__all__ = ["__version__", "load_plugins", "registry", "ContinuousAR", "RecipeConfig", "load_recipe", "train"]


def __getattr__(name: str):
    # Lazy, so that `import carl` stays light and plugins can import carl's ABCs cheaply.
    if name == "train":  # the module carl/train.py, callable as carl.api.train
        import carl.train

        return carl.train
    if name == "ContinuousAR":
        from carl.model import ContinuousAR

        return ContinuousAR
    if name in ("RecipeConfig", "load_recipe"):
        from carl import config

        return getattr(config, name)
    raise AttributeError(name)
