"""carl: the Continuous AutoRegression Library.

The Python API (see docs/python.md)::

    import carl
    folder = carl.train("tiny", {"train.max_steps": 100}, output="runs/my-tiny")
    model = carl.ContinuousAR.from_pretrained(folder)
    samples = model.generate(torch.arange(4), num_steps=8)

The package is layered (docs/architecture.md): leaves (errors, version, layout, progress,
charts) -> vocabulary (config, plugins, scores, orders, tokenizers, ...) -> ``carl.model`` ->
``carl.training`` -> faces (``carl.cli``, ``carl.api``). This root module is the top face: the
names below are imported when first used, so that ``import carl.tokenizers.base`` (what a plugin
needs) stays light.
"""

from carl import deprecated
from carl.plugins import load_plugins, registry
from carl.version import __version__

deprecated.install()

_PUBLIC = {
    "ContinuousAR": "carl.model", "open_model": "carl.model", "load_model": "carl.model",
    "RecipeConfig": "carl.config", "load_recipe": "carl.config",
    "train": "carl.api", "push": "carl.api", "CarlError": "carl.errors",
}
__all__ = ["__version__", "load_plugins", "registry", *_PUBLIC]


def __getattr__(name: str):
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if f"carl.{name}" in deprecated.MOVED_MODULES or f"carl.{name}" in deprecated.SPLIT_MODULES:
        return importlib.import_module(f"carl.{name}")  # an old module path: warns and gives the new home
    raise AttributeError(f"module 'carl' has no attribute {name!r}")
