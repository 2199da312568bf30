"""Loading model folders (local or on the Hub) with their recipe."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import snapshot_download

from carl.config import RecipeConfig, from_dict
from carl.model import ContinuousAR
from carl.plugins import CarlError

RECIPE_FILE = "recipe.yaml"


def resolve_folder(checkpoint: str | Path, revision: str | None = None) -> Path:
    """A local model folder as is, or a Hub repo id downloaded (or found in the cache)."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CarlError(f"{path} is not a carl model folder (no config.json)")
        return path
    if path.exists():
        raise CarlError(f"{path} is a file; give a model folder or a Hub repo id")
    try:
        return Path(snapshot_download(str(checkpoint), revision=revision))
    except Exception as exc:
        raise CarlError(f"cannot find model '{checkpoint}' locally or on the Hub: {type(exc).__name__}: {exc}") from exc


def load_model(checkpoint: str | Path, revision: str | None = None) -> tuple[ContinuousAR, RecipeConfig]:
    """The model of a folder or repo and its resolved recipe."""
    folder = resolve_folder(checkpoint, revision)
    recipe_path = folder / RECIPE_FILE
    if not recipe_path.exists():  # checked before the weights are read
        raise CarlError(f"{folder} has no {RECIPE_FILE}")
    recipe = from_dict(RecipeConfig, yaml.safe_load(recipe_path.read_text()))
    model = ContinuousAR.from_pretrained(folder)
    return model.eval(), recipe
