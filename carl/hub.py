"""Model folders on disk and on the Hugging Face Hub: loading, model cards, requirements, pushing.

A model folder holds ``config.json`` + ``model.safetensors`` (the ``PyTorchModelHubMixin`` pair;
EMA weights), ``recipe.yaml`` (the resolved recipe), ``carl.json`` (the carl and plugin versions
its parts come from), ``README.md`` (a model card) and ``samples.png``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import HfApi, snapshot_download

from carl.checkpoints import latest_checkpoint
from carl.config import RecipeConfig, dump_recipe, from_dict, parse_yaml, to_dict
from carl.model import ContinuousAR
from carl.plugins import CarlError, plugin_infos, registry

RECIPE_FILE = "recipe.yaml"
REQUIREMENTS_FILE = "carl.json"
WEIGHTS_FILE = "model.safetensors"
PUBLISHED = ("config.json", WEIGHTS_FILE, RECIPE_FILE, REQUIREMENTS_FILE, "README.md", "samples.png")
COMPONENTS = {"tokenizers": ("model", "tokenizer"), "conditioners": ("model", "conditioner"), "orders": ("model", "order"),
              "scores": ("model", "score"), "datasets": ("data",)}


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


def requirements(recipe: RecipeConfig) -> dict:
    """The plugins (name, distribution, version) that provide the recipe's components."""
    from carl import __version__

    infos = {i.name: i for i in plugin_infos()}
    plugins = {}
    data = to_dict(recipe)
    for kind, path in COMPONENTS.items():
        node = data
        for key in path:
            node = node[key]
        owner = registry(kind).owner(node["name"])
        info = infos.get(owner)
        if info is not None and not owner.startswith("carl."):
            plugins[owner] = {"distribution": info.distribution or owner, "version": info.version}
    return {"carl": __version__, "plugins": plugins}


def check_requirements(folder: Path) -> None:
    """Fail in one line when a plugin the model needs is not installed."""
    path = folder / REQUIREMENTS_FILE
    if not path.exists():
        return
    needed = json.loads(path.read_text()).get("plugins", {})
    installed = {i.name for i in plugin_infos() if i.error is None}
    for name, need in needed.items():
        if name not in installed:
            raise CarlError(f"this model needs the carl plugin '{name}' (version {need['version']}): "
                            f"pip install '{need['distribution']}>={need['version']}'")


def load_model(checkpoint: str | Path, revision: str | None = None) -> tuple[ContinuousAR, RecipeConfig]:
    """The model of a folder or repo and its resolved recipe."""
    folder = resolve_folder(checkpoint, revision)
    check_requirements(folder)
    recipe_path = folder / RECIPE_FILE
    if not recipe_path.exists():  # checked before the weights are read
        raise CarlError(f"{folder} has no {RECIPE_FILE}")
    recipe = from_dict(RecipeConfig, parse_yaml(recipe_path.read_text()))
    try:
        model = ContinuousAR.from_pretrained(folder)
    except CarlError:  # already one line naming the file
        raise
    except Exception as exc:  # a truncated or corrupt file: say which
        raise CarlError(f"cannot read the weights {folder / WEIGHTS_FILE}: {type(exc).__name__}: {exc}") from exc
    return model.eval(), recipe


def model_card(recipe: RecipeConfig, figures: dict | None = None, samples: bool = True) -> str:
    """README.md for the Hub: metadata (library ``carl``, tags for the modality and scoring rule)
    and what the model is, how it was trained and how to sample it."""
    m = recipe.model
    tags = ["carl", "continuous-autoregression", f"score-{m.score.name}", f"tokenizer-{m.tokenizer.name}",
            f"order-{m.order.name}", f"data-{recipe.data.name}"]
    meta = {"library_name": "carl", "tags": tags}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             "# A carl continuous autoregressive model", "",
             f"Tokenizer `{m.tokenizer.name}`, order `{m.order.name}`, scoring rule `{m.score.name}`, "
             f"a {m.backbone.depth}-block transformer of width {m.backbone.width}"
             + (f" (with a {m.backbone.encoder_depth}-block encoder)" if m.backbone.encoder_depth else "") + ".", ""]
    if figures:
        lines += ["## Training", "", *(f"- {k}: {v}" for k, v in figures.items()), ""]
    if samples:
        lines += ["## Samples", "", "![samples](samples.png)", ""]
    lines += ["## Use", "", "```bash", "pip install carl" + "".join(f" {p['distribution']}" for p in requirements(recipe)["plugins"].values()),
              "carl sample REPO_ID --out grid.png", "```", "", "```python",
              "from carl import ContinuousAR", "model = ContinuousAR.from_pretrained('REPO_ID')", "```", "",
              "The resolved training recipe is `recipe.yaml`.", ""]
    return "\n".join(lines)


def write_model_folder_extras(folder: Path, recipe: RecipeConfig, figures: dict | None = None) -> None:
    """``recipe.yaml``, ``carl.json`` and ``README.md`` beside the weights."""
    (folder / RECIPE_FILE).write_text(dump_recipe(recipe))
    (folder / REQUIREMENTS_FILE).write_text(json.dumps(requirements(recipe), indent=2))
    (folder / "README.md").write_text(model_card(recipe, figures, samples=(folder / "samples.png").exists()))


def push(folder: str | Path, repo_id: str, *, private: bool = False, raw: bool = False, api: HfApi | None = None) -> str:
    """Upload a model folder's published files (not its checkpoints or logs) to ``repo_id``.
    ``raw`` publishes the latest checkpoint's raw weights instead of the EMA ones."""
    folder = resolve_folder(folder)
    api = api or HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name in PUBLISHED:
            if (folder / name).exists():
                shutil.copy2(folder / name, staging / name)
        if raw:
            checkpoint = latest_checkpoint(folder)  # not a .tmp or .damaged one
            if checkpoint is None:
                raise CarlError(f"{folder} has no checkpoints/step-N with raw weights")
            shutil.copy2(checkpoint / WEIGHTS_FILE, staging / WEIGHTS_FILE)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, commit_message="Upload carl model")
    return str(getattr(info, "commit_url", info))
