"""Opening a model with what is known about how to sample it: the model of a model folder, a
training checkpoint folder, a name a plugin ships or a Hub repo id, and its recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carl.config import RecipeConfig, SampleConfig
from carl.errors import CarlError
from carl.layout import RECIPE_FILE
from carl.model.ar import ContinuousAR
from carl.model.folder import check_requirements, is_checkpoint, read_config, read_recipe
from carl.remote import resolve_folder


@dataclass
class LoadedModel:
    """A model read from a folder, with what is known about how to sample and picture it."""

    model: ContinuousAR
    recipe: RecipeConfig | None  # None: saved from Python without a training recipe
    folder: Path

    @property
    def sample(self) -> SampleConfig:
        """The recipe's sampling settings, or carl's defaults."""
        return self.recipe.sample if self.recipe is not None else SampleConfig()

    def data_source(self):
        """The recipe's data source (it draws samples as pictures), or None without a recipe."""
        return self.recipe.data.build("datasets") if self.recipe is not None else None


def open_model(reference: str | Path, revision: str | None = None) -> LoadedModel:
    """The model of a model folder, a training checkpoint folder (its EMA weights), a name a plugin
    ships or a Hub repo id, in eval mode, with its recipe when the folder has one."""
    folder = resolve_folder(reference, revision)
    if is_checkpoint(folder):
        return LoadedModel(ContinuousAR.from_checkpoint(folder), read_recipe(folder), folder)
    read_config(folder)
    check_requirements(folder)
    recipe = read_recipe(folder) if (folder / RECIPE_FILE).exists() else None  # checked before the weights are read
    try:
        model = ContinuousAR.from_pretrained(folder)
    except CarlError:
        raise
    except Exception as exc:  # unreadable weights are a WeightsError (a CarlError) that names the file
        raise CarlError(f"cannot load the model in {folder}: {type(exc).__name__}: {exc}") from exc
    return LoadedModel(model.eval(), recipe, folder)


def load_model(reference: str | Path, revision: str | None = None) -> tuple[ContinuousAR, RecipeConfig]:
    """The model of a folder, checkpoint, shipped name or repo and its resolved recipe (for
    commands that need the training data or settings; :func:`open_model` also reads folders saved
    without one)."""
    loaded = open_model(reference, revision)
    if loaded.recipe is None:
        raise CarlError(f"{loaded.folder} has no {RECIPE_FILE} (it was saved from Python without a recipe): "
                        f"save it with model.save_pretrained(folder, recipe=...)")
    return loaded.model, loaded.recipe
