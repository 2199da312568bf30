"""The model folder: one format, whoever writes it (training, ``save_pretrained`` /
``push_to_hub``, ``carl push``, ``carl convert``), and the Hub mixin that reads and writes it.

A model folder holds ``config.json`` + ``model.safetensors`` (the model's parts and its EMA
weights, ``PyTorchModelHubMixin``'s pair), ``carl.json`` (the carl version and the plugins its
parts come from: a missing plugin is named with the ``pip install`` line to run), ``README.md``
(the card, :mod:`carl.model.card`) and, when carl trained it, ``recipe.yaml`` (the data and the
sampling settings), ``results.json`` and ``samples.png``. A training checkpoint folder
(``runs/x/checkpoints/step-N``: ``recipe.yaml`` and EMA weights ``ema.safetensors``) is read too.
File names: :mod:`carl.layout`.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file

from carl.config import ModelConfig, RecipeConfig, SampleConfig, dump_recipe, from_dict, parse_yaml, to_dict
from carl.errors import CarlError, WeightsError
from carl.layout import (
    CHECKPOINTS,
    CONFIG_FILE,
    EMA_FILE,
    PUBLISHED,
    RECIPE_FILE,
    REQUIREMENTS_FILE,
    RESULTS_FILE,
    WEIGHTS_FILE,
    step_of,
)
from carl.model.card import pip_requirement, write_card
from carl.plugins import plugin_infos, registry
from carl.remote import check_repo_id, hub_failure, is_hub_error, upload_folder
from carl.version import __version__
from carl.weights import load_strict

COMPONENTS = {"tokenizers": ("model", "tokenizer"), "conditioners": ("model", "conditioner"), "orders": ("model", "order"),
              "scores": ("model", "score"), "datasets": ("data",)}


# ---------------------------------------------------------------------------------------------
# What a folder is


def is_checkpoint(path: Path) -> bool:
    """A training checkpoint folder (EMA weights and a recipe, no ``config.json``)."""
    return (path / EMA_FILE).is_file() and (path / RECIPE_FILE).is_file() and not (path / CONFIG_FILE).exists()


def local_folder(folder: str | Path) -> Path:
    """An existing local model folder (``config.json`` inside), or one line saying what is wrong."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CarlError(f"no such folder: {path}" if not path.exists() else f"{path} is a file, not a model folder")
    if not (path / CONFIG_FILE).exists():
        raise CarlError(_not_a_model_folder(path))
    return path


def _not_a_model_folder(path: Path) -> str:
    if is_checkpoint(path):
        return (f"{path} is a training checkpoint, not a model folder; `carl sample` reads it as it is, "
                f"`carl push` publishes the run's model folder ({path.parent.parent})")
    for checkpoints in (path / CHECKPOINTS, path):
        steps = sorted(p for p in checkpoints.glob("step-*") if step_of(p) is not None and is_checkpoint(p))
        if steps:
            return (f"{path} is not a model folder (no {CONFIG_FILE}) but holds training checkpoints: "
                    f"give one of them, e.g. {steps[-1]}")
    return f"{path} is not a carl model folder (no {CONFIG_FILE})"


def read_config(folder: Path) -> dict:
    """The parsed ``config.json`` of a local model folder, or one line naming the folder or the
    file and what is wrong (a corrupt config must not read as a weights error)."""
    path = local_folder(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise CarlError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def read_recipe(folder: Path) -> RecipeConfig:
    """The validated ``recipe.yaml`` of a model or checkpoint folder; one line naming the file when
    it is not valid YAML or not a valid recipe."""
    path = Path(folder) / RECIPE_FILE
    try:
        data = parse_yaml(path.read_text())
    except Exception as exc:  # a YAMLError (malformed, duplicate key) or an unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CarlError(f"cannot read {path}: {type(exc).__name__}: {first}") from exc
    try:
        return from_dict(RecipeConfig, data)
    except CarlError as exc:
        raise CarlError(f"{path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Plugin requirements (carl.json)


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
# Writing and publishing


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


def record_results(folder: str | Path, figures: dict) -> Path:
    """Add measured ``figures`` (e.g. ``{"FID (50,000 images, 64 steps, CFG 3.0)": 2.8}``) to a local
    model folder's ``results.json`` (figures of the same name are replaced, others kept) and
    rewrite its card, so the figures travel with the model; returns the results file."""
    folder = local_folder(folder)
    path = folder / RESULTS_FILE
    try:
        results = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as exc:
        raise CarlError(f"cannot read {path}: {exc}") from exc
    if not isinstance(results, dict):
        raise CarlError(f"{path} is not a JSON object of figures")
    path.write_text(json.dumps({**results, **figures}, indent=2, default=str))
    write_card(folder)
    return path


def publish(folder: str | Path, repo_id: str, *, private: bool = False, weights: Path | None = None, api=None,
            commit_message: str = "Upload carl model") -> str:
    """Upload a local model folder's published files (:data:`carl.layout.PUBLISHED`; never its
    checkpoints or logs) to ``repo_id``, with a card that loads it from there; ``weights``
    replaces its ``model.safetensors`` (e.g. a checkpoint's raw weights). Returns the commit URL."""
    folder = local_folder(folder)
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name in PUBLISHED:
            if (folder / name).exists():
                shutil.copy2(folder / name, staging / name)
        if weights is not None:
            shutil.copy2(weights, staging / WEIGHTS_FILE)
        write_card(staging, repo_id)
        return upload_folder(staging, repo_id, private=private, api=api, commit_message=commit_message)


# ---------------------------------------------------------------------------------------------
# The Hub mixin


class ModelFolderMixin(PyTorchModelHubMixin):
    """``PyTorchModelHubMixin`` extended so that every writer produces the same complete model
    folder and every reader is quiet, strict and pickle-free. The model class keeps ``config``
    (its :class:`carl.config.ModelConfig`) and takes it as its only constructor argument."""

    config: ModelConfig
    sample_config: SampleConfig  # the sampling settings of its recipe, when the folder has one

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        recipe: RecipeConfig | None = None,
        figures: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        **push_to_hub_kwargs,
    ) -> str | None:
        """Write a complete model folder: ``config.json``, ``model.safetensors``, ``carl.json``
        (the plugins its parts need) and a model card; with ``recipe``, also ``recipe.yaml`` (the
        data and sampling settings ``carl sample`` uses; without one it uses carl's defaults).

        Args:
            save_directory: the folder (created if needed; the files above are replaced).
            recipe: the recipe the model was trained from, if any.
            figures: measured figures for the card (``results.json``), e.g. ``{"loss": 0.41}``.
            repo_id: with ``push_to_hub``, the Hub repository (default: the folder's name).
            push_to_hub: also upload the folder (see :meth:`push_to_hub`).

        Returns:
            The commit URL when pushing, else None.

        Raises:
            ValueError: ``recipe`` describes another model.
        """
        # Checked even without push_to_hub, so that a misspelt option (privat=True) is not ignored.
        unknown = set(push_to_hub_kwargs) - set(inspect.signature(self.push_to_hub).parameters)
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        if recipe is not None and to_dict(recipe.model) != to_dict(self.config):
            raise ValueError("save_pretrained: the recipe's model section is not this model's config; "
                             "give the recipe the model was trained from, or none")
        super().save_pretrained(save_directory)  # config.json + model.safetensors (the mixin's pair)
        write_model_folder_extras(Path(save_directory), recipe, figures)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, recipe=recipe, figures=figures, **push_to_hub_kwargs)
        return None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        recipe: RecipeConfig | None = None,
        figures: dict | None = None,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload carl model",
    ) -> str:
        """Upload the model folder :meth:`save_pretrained` writes to ``repo_id`` (created if
        needed), its card loading it from there.

        Returns:
            The commit URL.

        Raises:
            carl.errors.CarlError: one line when the Hub cannot be reached or refuses.
        """
        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, recipe=recipe, figures=figures)
            return publish(tmp, repo_id, private=private, api=HfApi(token=token), commit_message=commit_message)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        map_location: str = "cpu",
        strict: bool = False,
    ):
        """Load a trained model, in eval mode, quietly and from safetensors only.

        Args:
            pretrained_model_name_or_path: a model folder (a training output, or what
                :meth:`save_pretrained` wrote), a training checkpoint folder
                (``runs/x/checkpoints/step-N``: its EMA weights), or a Hub repo id (``user/name``,
                downloaded once into the Hub cache).
            revision: a Hub branch, tag or commit.
            token: a Hub token for private repositories (default: the logged-in one).
            cache_dir: the Hub cache folder.
            force_download: download again even if cached.
            local_files_only: never reach the Hub; use the cache only.
            map_location: the device to load the weights on.
            strict: kept for the Hub mixin's signature: carl always refuses missing or
                unexpected tensors.

        Returns:
            The model, in eval mode (call ``.train()`` to fine-tune it).

        Raises:
            carl.errors.CarlError: the model needs a carl plugin that is not installed: the
                message gives the ``pip install`` line.
        """
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            if is_checkpoint(folder):
                return cls.from_checkpoint(folder).to(map_location)
            read_config(folder)  # a missing or corrupt config.json named in one line, before the mixin reads it
        try:
            return super().from_pretrained(
                pretrained_model_name_or_path, revision=revision, token=token, cache_dir=cache_dir,
                force_download=force_download, local_files_only=local_files_only, map_location=map_location, strict=strict,
            )
        except CarlError:
            raise
        except Exception as exc:
            if folder.is_dir() or not is_hub_error(exc):
                raise
            raise hub_failure(exc, f"cannot load '{pretrained_model_name_or_path}' from the Hub") from exc

    @classmethod
    def from_checkpoint(cls, folder: Path):
        """The model of a training checkpoint: built from its recipe, with the EMA weights (strictly)."""
        from safetensors.torch import load_model as load_safetensors

        recipe = read_recipe(folder)
        model = cls(recipe.model)
        try:
            load_safetensors(model, str(folder / EMA_FILE), strict=True)
        except Exception as exc:
            raise CarlError(f"cannot read the EMA weights {folder / EMA_FILE}: {type(exc).__name__}: {exc}") from exc
        model.sample_config = recipe.sample
        return model.eval()

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = False, **model_kwargs):
        """The mixin's loader, but quiet, safetensors only (never a pickle), and naming the plugin
        to install (``carl.json``) before a missing one fails as an unknown component."""

        def fetch(filename: str, required: bool) -> Path | None:
            if Path(model_id).is_dir():
                path = Path(model_id) / filename
            else:
                from huggingface_hub import hf_hub_download
                from huggingface_hub.errors import EntryNotFoundError

                try:
                    path = Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                                force_download=force_download, local_files_only=local_files_only))
                except EntryNotFoundError:
                    path = Path(model_id) / filename  # absent on the Hub
            if required and not path.is_file():
                raise FileNotFoundError(f"{model_id} has no {filename}")
            return path if path.is_file() else None

        requirements_file = fetch(REQUIREMENTS_FILE, required=False)
        if requirements_file is not None:
            check_requirements(requirements_file.parent)
        model = cls(**model_kwargs)
        model = cls._load_as_safetensor(model, str(fetch(WEIGHTS_FILE, required=True)), map_location, strict)
        recipe_file = fetch(RECIPE_FILE, required=False)
        if recipe_file is not None:  # the sampling settings it was trained and shipped with
            model.sample_config = read_recipe(recipe_file.parent).sample
        return model

    @classmethod
    def _load_as_safetensor(cls, model, model_file, map_location, strict):
        """Every tensor of the model must be in ``model_file`` and nothing else (the mixin's
        default leaves missing ones at their random initialisation); errors name the file and
        the first missing or unexpected keys."""
        try:
            state = load_file(model_file, device=str(map_location))
        except Exception as exc:  # truncated or not safetensors: say which file
            raise WeightsError(f"cannot read the weights {model_file}: {type(exc).__name__}: {exc}") from exc
        load_strict(model, state, source=model_file)
        return model.eval()

    @classmethod
    def _load_as_pickle(cls, model, model_file, map_location, strict):
        raise WeightsError(f"{model_file}: carl reads model weights from model.safetensors only, not from pickles")
