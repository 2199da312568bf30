"""carl's Python API for training and publishing: :func:`train` and :func:`push` (what ``carl
train`` and ``carl push`` do), exported as ``carl.train`` and ``carl.push``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from carl.config import (
    RecipeConfig,
    TokenizerRecipeConfig,
    apply_overrides,
    from_dict,
    load_recipe,
    parse_yaml,
    recipe_class,
    to_dict,
)
from carl.errors import CarlError
from carl.layout import WEIGHTS_FILE
from carl.model.folder import local_folder, publish
from carl.training.checkpoints import latest_checkpoint, saved_recipe
from carl.training.trainer import Trainer


def resolve(recipe: str | Path | RecipeConfig | TokenizerRecipeConfig,
            overrides: Sequence[str] | Mapping[str, Any] = ()) -> RecipeConfig | TokenizerRecipeConfig:
    """A validated recipe from a file, a shipped name or a :class:`RecipeConfig` (or
    :class:`TokenizerRecipeConfig`), with dotted overrides (``["train.lr=1e-4"]`` or
    ``{"train.lr": 1e-4}``) applied."""
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
            :class:`carl.config.RecipeConfig` / :class:`carl.config.TokenizerRecipeConfig`
            (``carl.load_recipe(...)``).
        overrides: dotted overrides, as on the command line (``["train.max_steps=100"]``) or as
            a mapping (``{"train.max_steps": 100, "sample.cfg": 2.0}``).
        output: the output folder (default: the recipe's ``output``, ``runs/<recipe name>``).
        resume: continue from the latest checkpoint in ``output``. A recipe given by name or path
            then stands for the run's own recipe (the one saved with that checkpoint) with
            ``overrides`` on top, as ``carl train RECIPE --resume`` does; a
            :class:`RecipeConfig` object is trained as it is.
        progress: show a progress bar (otherwise one line per logged step).
        overwrite: start a new run in a non-empty ``output`` (carl's earlier outputs are replaced,
            other files kept).

    Returns:
        The output folder: a model folder for ``ContinuousAR.from_pretrained`` and ``carl sample``
        (a tokenizer folder for a tokenizer recipe).

    Raises:
        carl.errors.RecipeError: a recipe key, value or component name is wrong (the message
            names the key path).
        carl.errors.CarlError: the output folder holds another run (pass ``resume`` or
            ``overwrite``), the data is too small for the batch, ...
        carl.errors.TrainingInterrupted: SIGINT / SIGTERM stopped the run after a checkpoint.

    Example:
        ``folder = carl.train("tiny", {"train.max_steps": 100}, output="runs/my-tiny")``
    """
    cfg = resolve(recipe, overrides)
    if resume and not isinstance(recipe, (RecipeConfig, TokenizerRecipeConfig)):
        cfg = _run_recipe(cfg, Path(output or cfg.output), overrides)
    return Trainer(cfg, output, resume=resume, progress=progress, overwrite=overwrite).run()


def _run_recipe(cfg: RecipeConfig | TokenizerRecipeConfig, output: Path,
                overrides: Sequence[str] | Mapping[str, Any]) -> RecipeConfig | TokenizerRecipeConfig:
    """What ``--resume`` trains: the run's own recipe (saved with its latest checkpoint), with the
    overrides given now applied on top; ``cfg`` (the recipe named now) only found the folder."""
    saved = saved_recipe(output)
    if saved is None:
        return cfg  # no checkpoint yet: the run starts from scratch with the recipe named now
    try:
        data = parse_yaml(saved.read_text())
    except Exception as exc:
        raise CarlError(f"cannot read the run's recipe {saved}: {type(exc).__name__}: {exc}") from exc
    resumed = resolve(from_dict(recipe_class(data), data), overrides)
    differ = _differences(to_dict(cfg), to_dict(resumed))
    if differ:
        print(f"carl: --resume continues with the run's own recipe ({saved}) and the overrides given now; the recipe "
              f"named differs in {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}: pass an override to change "
              f"a setting of the run")
    return resumed


def _differences(given: dict, used: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two plain recipes (``output`` aside)."""
    keys = []
    for key in sorted(set(given) | set(used)):
        path, a, b = f"{prefix}{key}", given.get(key), used.get(key)
        if path == "output":
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{path}.")
        elif a != b:
            keys.append(f"{path} ({a!r} here, {b!r} in the run)")
    return keys


def push(folder: str | Path, repo_id: str, *, private: bool = False, raw: bool = False, api=None,
         commit_message: str = "Upload carl model") -> str:
    """Publish a local model folder on the Hugging Face Hub (what ``carl push`` does): its
    published files (weights, config, ``carl.json``, recipe, results, samples; never checkpoints or
    logs) with a card that loads it from ``repo_id``.

    Args:
        folder: a model folder (a training output or a saved model).
        repo_id: ``user/name`` (created if needed).
        private: create the repository private.
        raw: publish the latest checkpoint's raw weights instead of the EMA ones.
        api: a ``huggingface_hub.HfApi`` (default: one with the logged-in token).
        commit_message: the Hub commit's message.

    Returns:
        The commit URL.
    """
    weights = None
    if raw:
        checkpoint = latest_checkpoint(local_folder(folder))  # not a .tmp or .damaged one
        if checkpoint is None:
            raise CarlError(f"{folder} has no checkpoints/step-N with raw weights")
        weights = checkpoint / WEIGHTS_FILE
    return publish(folder, repo_id, private=private, weights=weights, api=api, commit_message=commit_message)
