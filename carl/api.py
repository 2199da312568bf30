"""carl's Python API for training: ``carl.train(recipe, overrides=..., output=...)``.

``carl.train`` is also the name of the training-loop module (``carl/train.py``): Python binds a
package's submodule as its attribute on import, so that module is made callable
(:class:`CallableModule`) and ``carl.train(...)``, ``from carl import train`` and
``import carl.train`` all lead here.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from carl.config import RecipeConfig, TokenizerRecipeConfig, apply_overrides, from_dict, load_recipe, to_dict


def resolve(recipe: str | Path | RecipeConfig | TokenizerRecipeConfig,
            overrides: Sequence[str] | Mapping[str, Any] = ()) -> RecipeConfig | TokenizerRecipeConfig:
    """A validated recipe from a file, a shipped name or a :class:`RecipeConfig`, with dotted
    overrides (``["train.lr=1e-4"]`` or ``{"train.lr": 1e-4}``) applied."""
    if isinstance(overrides, Mapping):  # JSON is YAML: each value keeps its type through the parser
        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key.path=value' strings or a mapping, not one string")
    if isinstance(recipe, (RecipeConfig, TokenizerRecipeConfig)):
        return from_dict(type(recipe), apply_overrides(to_dict(recipe), list(overrides)))
    return load_recipe(recipe, list(overrides))


def train(
    recipe: str | Path | RecipeConfig | TokenizerRecipeConfig,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    output: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train a model or a tokenizer (what ``carl train`` does) and return its output folder.

    Args:
        recipe: a recipe file, the name of a shipped recipe (``carl recipes list``), or a
            :class:`carl.config.RecipeConfig` (``carl.load_recipe(...)``).
        overrides: dotted overrides, as on the command line (``["train.max_steps=100"]``) or as
            a mapping (``{"train.max_steps": 100, "sample.cfg": 2.0}``).
        output: the output folder (default: the recipe's ``output``, ``runs/<recipe name>``).
        resume: continue from the latest checkpoint in ``output``.
        progress: show a progress bar (otherwise one line per logged step).

    Returns:
        The output folder: a model folder for ``ContinuousAR.from_pretrained`` and ``carl sample``.

    Raises:
        carl.config.RecipeError: a recipe key, value or component name is wrong (the message
            names the key path).
        carl.plugins.CarlError: the output folder holds another run (pass ``resume``), the data
            is too small for the batch, ...

    Example:
        ``folder = carl.train("tiny", {"train.max_steps": 100}, output="runs/my-tiny")``
    """
    from carl.train import train as run

    return run(resolve(recipe, overrides), output=output, resume=resume, progress=progress, overwrite=overwrite)


class CallableModule(types.ModuleType):
    """The module ``carl.train``, callable as :func:`train`."""

    def __call__(
        self,
        recipe: str | Path | RecipeConfig,
        overrides: Sequence[str] | Mapping[str, Any] = (),
        *,
        output: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        overwrite: bool = False,
    ) -> Path:
        return train(recipe, overrides, output=output, resume=resume, progress=progress, overwrite=overwrite)

    __call__.__doc__ = train.__doc__
