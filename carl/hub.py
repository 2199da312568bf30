"""Model folders on disk and on the Hugging Face Hub: finding, loading, writing and pushing them.

One format, whoever writes it (training, ``ContinuousAR.save_pretrained`` / ``push_to_hub``,
``carl push``, ``carl convert``):

- ``config.json`` + ``model.safetensors``: the model's parts and its (EMA) weights, the
  ``PyTorchModelHubMixin`` pair;
- ``carl.json``: the carl version and the plugins (name, pip distribution, version) its parts
  come from, so that a missing plugin is named with the ``pip install`` line to run;
- ``README.md``: the model card (:mod:`carl.modelcard`);
- when trained by carl: ``recipe.yaml`` (the resolved recipe: the data, the sampling settings),
  ``results.json`` (figures measured in training) and ``samples.png``.

``carl sample`` and :func:`open_model` also read a training checkpoint folder
(``runs/x/checkpoints/step-N``: its ``recipe.yaml`` and EMA weights ``ema.safetensors``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import HfApi, snapshot_download

from carl.checkpoints import latest_checkpoint
from carl.config import ModelConfig, RecipeConfig, SampleConfig, dump_recipe, from_dict, parse_yaml, to_dict
from carl.model import ContinuousAR
from carl.modelcard import (
    CONFIG_FILE, RECIPE_FILE, REQUIREMENTS_FILE, RESULTS_FILE, SAMPLES_FILE, pip_requirement, write_card,
)
from carl.plugins import CarlError, plugin_infos, registry
from carl.version import __version__

WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"  # in a training checkpoint folder
PUBLISHED = (CONFIG_FILE, WEIGHTS_FILE, RECIPE_FILE, REQUIREMENTS_FILE, RESULTS_FILE, "README.md", SAMPLES_FILE)
COMPONENTS = {"tokenizers": ("model", "tokenizer"), "conditioners": ("model", "conditioner"), "orders": ("model", "order"),
              "scores": ("model", "score"), "datasets": ("data",)}


# ---------------------------------------------------------------------------------------------
# Finding a folder: local paths stay local, repo ids go to the Hub


def looks_like_path(reference: str) -> bool:
    """True for what can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``),
    never a Hub repo id (``name`` or ``user/name``)."""
    return reference.startswith((".", "/", "~", "\\")) or reference.endswith(("/", "\\")) or reference.count("/") > 1


def hub_failure(exc: BaseException, what: str) -> CarlError:
    """One line for a failed Hub call: what failed and what to do about it."""
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        hint = "HF_HUB_OFFLINE is set; unset it to reach the Hub"
    elif isinstance(exc, errors.LocalEntryNotFoundError) and _offline():
        hint = "it is not in the Hub cache, and HF_HUB_OFFLINE is set (unset it to download)"
    elif isinstance(exc, errors.LocalTokenNotFoundError) or status in (401, 403):
        hint = "not logged in, or no write access: run `hf auth login` (or set HF_TOKEN)"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        hint = "no such repository on the Hub (a private one needs `hf auth login`)"
    elif _is_network_error(exc):
        hint = "cannot reach huggingface.co; check the network connection (or HTTPS_PROXY) and try again"
    elif isinstance(exc, errors.HfHubHTTPError):
        hint = f"the Hub answered {status}: {str(exc).splitlines()[0]}"
    else:
        hint = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return CarlError(f"{what}: {hint}")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _is_network_error(exc: BaseException | None) -> bool:
    """A connection failure anywhere in the exception's chain (httpx, requests or the socket)."""
    network = {"ConnectError", "ConnectionError", "ConnectTimeout", "NetworkError", "TransportError", "Timeout",
               "TimeoutException", "gaierror"}
    seen = 0
    while exc is not None and seen < 10:
        if any(cls.__name__ in network for cls in type(exc).__mro__):
            from huggingface_hub import errors

            if not isinstance(exc, errors.OfflineModeIsEnabled):
                return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def resolve_folder(checkpoint: str | Path, revision: str | None = None) -> Path:
    """A local folder as is (a model folder or a training checkpoint), or a Hub repo id
    downloaded (or found in the Hub cache). A local path is never looked up on the Hub."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CarlError(f"{path} is a file; give a model folder, a checkpoint folder or a Hub repo id")
        return path
    text = str(checkpoint)
    if looks_like_path(text):
        raise CarlError(f"no such folder: {path}")
    try:
        return Path(snapshot_download(text, revision=revision))
    except Exception as exc:
        raise hub_failure(exc, f"no such folder '{text}', and it cannot be fetched from the Hub") from exc


def local_folder(folder: str | Path) -> Path:
    """An existing local model folder (``config.json`` inside), or one line saying what is wrong."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CarlError(f"no such folder: {path}" if not path.exists() else f"{path} is a file, not a model folder")
    if not (path / CONFIG_FILE).exists():
        raise CarlError(_not_a_model_folder(path))
    return path


def read_config(folder: Path) -> dict:
    """The parsed ``config.json`` of a local model folder, or one line naming the folder or the
    file and what is wrong (a corrupt config must not read as a weights error)."""
    path = local_folder(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise CarlError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def _not_a_model_folder(path: Path) -> str:
    if is_checkpoint(path):
        return (f"{path} is a training checkpoint, not a model folder; `carl sample` reads it as it is, "
                f"`carl push` publishes the run's model folder ({path.parent.parent})")
    for checkpoints in (path / "checkpoints", path):
        steps = sorted(p for p in checkpoints.glob("step-*") if is_checkpoint(p))
        if steps:
            return (f"{path} is not a model folder (no {CONFIG_FILE}) but holds training checkpoints: "
                    f"give one of them, e.g. {steps[-1]}")
    return f"{path} is not a carl model folder (no {CONFIG_FILE})"


def is_checkpoint(path: Path) -> bool:
    return (path / EMA_FILE).is_file() and (path / RECIPE_FILE).is_file() and not (path / CONFIG_FILE).exists()


# ---------------------------------------------------------------------------------------------
# Plugin requirements


def requirements(cfg: RecipeConfig | ModelConfig) -> dict:
    """The carl version and the plugins (name -> pip distribution, version) that provide the
    components of a recipe (model and data) or of a model config alone."""

    infos = {i.name: i for i in plugin_infos()}
    data = to_dict(cfg)
    if "model" not in data:  # a ModelConfig
        data = {"model": data}
    plugins = {}
    for kind, path in COMPONENTS.items():
        node = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            continue
        owner = registry(kind).owner(node["name"])
        info = infos.get(owner)
        if info is not None and not owner.startswith("carl."):
            plugins[owner] = {"distribution": info.distribution or owner, "version": info.version}
    return {"carl": __version__, "plugins": plugins}


def missing_plugins(needed: dict) -> str | None:
    """Why the plugins in a ``carl.json`` (its parsed content) are not usable here, or None."""
    infos = {i.name: i for i in plugin_infos()}
    for name, need in needed.get("plugins", {}).items():
        install = pip_requirement(need["distribution"], need.get("version"))
        info = infos.get(name)
        if info is None:
            return f"this model needs the carl plugin '{name}' (version {need['version']}): pip install {install}"
        if info.error is not None:
            return f"this model needs the carl plugin '{name}', which is installed but failed to load: {info.error}"
    return None


def check_requirements(folder: Path) -> None:
    """Fail in one line when a plugin the model needs is not installed (or failed to load)."""
    path = folder / REQUIREMENTS_FILE
    if path.exists():
        problem = missing_plugins(json.loads(path.read_text()))
        if problem:
            raise CarlError(problem)


# ---------------------------------------------------------------------------------------------
# Loading


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
    """The model of a model folder, a training checkpoint folder (its EMA weights) or a Hub repo id."""
    folder = resolve_folder(reference, revision)
    if is_checkpoint(folder):
        return _open_checkpoint(folder)
    read_config(folder)
    check_requirements(folder)
    recipe = _read_recipe(folder) if (folder / RECIPE_FILE).exists() else None  # checked before the weights are read
    try:
        model = ContinuousAR.from_pretrained(folder)
    except CarlError:
        raise
    except Exception as exc:  # unreadable weights are a WeightsError (a CarlError) that names the file
        raise CarlError(f"cannot load the model in {folder}: {type(exc).__name__}: {exc}") from exc
    return LoadedModel(model.eval(), recipe, folder)


def load_model(checkpoint: str | Path, revision: str | None = None) -> tuple[ContinuousAR, RecipeConfig]:
    """The model of a folder, checkpoint or repo and its resolved recipe (for commands that need
    the training data or settings; :func:`open_model` also reads folders saved without one)."""
    loaded = open_model(checkpoint, revision)
    if loaded.recipe is None:
        raise CarlError(f"{loaded.folder} has no {RECIPE_FILE} (it was saved from Python without a recipe): "
                        f"save it with model.save_pretrained(folder, recipe=...)")
    return loaded.model, loaded.recipe


def _read_recipe(folder: Path) -> RecipeConfig:
    return from_dict(RecipeConfig, parse_yaml((folder / RECIPE_FILE).read_text()))


def _open_checkpoint(folder: Path) -> LoadedModel:
    """A training checkpoint: the model built from its recipe, with the EMA weights (strictly)."""
    from safetensors.torch import load_model as load_safetensors

    recipe = _read_recipe(folder)
    model = ContinuousAR(recipe.model)
    try:
        load_safetensors(model, str(folder / EMA_FILE), strict=True)
    except Exception as exc:
        raise CarlError(f"cannot read the EMA weights {folder / EMA_FILE}: {type(exc).__name__}: {exc}") from exc
    return LoadedModel(model.eval(), recipe, folder)


# ---------------------------------------------------------------------------------------------
# Writing and pushing


def write_model_folder_extras(folder: Path, recipe: RecipeConfig | ModelConfig | None = None, figures: dict | None = None,
                              location: str | None = None) -> None:
    """Everything beside ``config.json`` + ``model.safetensors``: ``carl.json``, the recipe and
    the training figures when given, and the model card (``location``: how users load it)."""
    folder = Path(folder)
    if isinstance(recipe, RecipeConfig):
        (folder / RECIPE_FILE).write_text(dump_recipe(recipe))
    if recipe is None:
        recipe = from_dict(ModelConfig, read_config(folder), "config")
    (folder / REQUIREMENTS_FILE).write_text(json.dumps(requirements(recipe), indent=2))
    if figures:
        (folder / RESULTS_FILE).write_text(json.dumps(figures, indent=2, default=str))
    write_card(folder, location)


def push(folder: str | Path, repo_id: str, *, private: bool = False, raw: bool = False, api: HfApi | None = None,
         commit_message: str = "Upload carl model") -> str:
    """Upload a local model folder's published files (not its checkpoints or logs) to ``repo_id``,
    with a model card that loads it from there. ``raw`` publishes the latest checkpoint's raw
    weights instead of the EMA ones."""
    from huggingface_hub.utils import validate_repo_id

    folder = local_folder(folder)
    try:
        validate_repo_id(repo_id)
    except Exception as exc:
        raise CarlError(f"'{repo_id}' is not a Hub repo id (user/name): {exc}") from exc
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
        write_card(staging, repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, commit_message=commit_message)
        except Exception as exc:
            raise hub_failure(exc, f"cannot push to {repo_id}") from exc
    return str(getattr(info, "commit_url", info))
