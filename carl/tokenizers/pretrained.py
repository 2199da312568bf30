"""Tokenizer folders: a trained tokenizer on disk or on the Hub.

A tokenizer folder holds ``config.json`` (``{"tokenizer": name, "options": {...}}``: the registered
tokenizer and its full config), ``model.safetensors`` (its weights and normalisation buffers),
``README.md`` (a card), and, when carl trained it, ``recipe.yaml`` and ``reconstructions.png``.
A reference to one is a local folder, the name of a folder a plugin ships
(``register_pretrained``), or a Hub repo id (downloaded once; offline, the Hub cache).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from carl.config import from_dict, to_dict
from carl.errors import CarlError
from carl.layout import CARD_FILE, CONFIG_FILE, RECIPE_FILE, RECONSTRUCTIONS_FILE, WEIGHTS_FILE
from carl.plugins import registry
from carl.remote import resolve_folder
from carl.tokenizers.base import Tokenizer
from carl.weights import load_state_file, load_strict


def resolve_tokenizer_folder(reference: str | Path) -> Path:
    """The local folder of a tokenizer reference (a path, a shipped name or a Hub repo id)."""
    folder = resolve_folder(reference)
    if not (folder / CONFIG_FILE).is_file():
        raise CarlError(f"{folder} is not a tokenizer folder (no {CONFIG_FILE})")
    return folder


def read_tokenizer_config(reference: str | Path) -> tuple[str, dict]:
    """The registered tokenizer name and the options saved in a tokenizer folder."""
    folder = resolve_tokenizer_folder(reference)
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise CarlError(f"{folder / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(saved, dict) or "tokenizer" not in saved:
        raise CarlError(f"{folder / CONFIG_FILE} is not a tokenizer config (no 'tokenizer' key): "
                        f"is {folder} a model folder rather than a tokenizer folder?")
    return saved["tokenizer"], saved.get("options", {})


def folder_options(reference: str | Path, expected: str) -> dict:
    """The saved options of a tokenizer folder that must hold tokenizer ``expected``."""
    name, options = read_tokenizer_config(reference)
    if name != expected:
        raise CarlError(f"tokenizer folder '{reference}' holds a '{name}' tokenizer, not '{expected}'")
    return options


def load_tokenizer_state(tokenizer: Tokenizer, reference: str | Path) -> None:
    """Load a tokenizer folder's weights into ``tokenizer``, strictly (missing, unexpected and
    reshaped tensors are named)."""
    path = resolve_tokenizer_folder(reference) / WEIGHTS_FILE
    if not path.is_file():
        raise CarlError(f"tokenizer folder '{reference}' has no {WEIGHTS_FILE}")
    load_strict(tokenizer, load_state_file(path), source=path)


def load_tokenizer(reference: str | Path) -> Tokenizer:
    """Build the tokenizer of a folder (path, shipped name or Hub repo id) with its weights, in eval mode."""
    name, options = read_tokenizer_config(reference)
    cls = registry("tokenizers").get(name)
    config = from_dict(cls.Config, options, f"{reference}/{CONFIG_FILE}")
    tokenizer = cls(config)
    load_tokenizer_state(tokenizer, reference)
    return tokenizer.eval()


def tokenizer_options(tokenizer: Tokenizer) -> dict:
    """The plain options of a tokenizer's config, without ``path`` (a folder does not point at itself)."""
    options = to_dict(tokenizer.config) if dataclasses.is_dataclass(getattr(tokenizer, "config", None)) else {}
    options.pop("path", None)
    return options


def save_tokenizer(tokenizer: Tokenizer, name: str, folder: Path, *, recipe: str | None = None,
                   figures: dict | None = None) -> Path:
    """Write ``tokenizer`` (registered as ``name``) as a tokenizer folder; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"tokenizer": name, "options": tokenizer_options(tokenizer),
              "token_shape": [tokenizer.num_tokens, tokenizer.token_dim]}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_tokenizer_weights(tokenizer, folder)
    if recipe is not None:
        (folder / RECIPE_FILE).write_text(recipe)
    (folder / CARD_FILE).write_text(tokenizer_card(name, tokenizer, figures, (folder / RECONSTRUCTIONS_FILE).exists()))
    return folder


def save_tokenizer_weights(tokenizer: Tokenizer, folder: Path) -> Path:
    """(Re)write a tokenizer folder's weights file (weights and normalisation buffers)."""
    state = {k: v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    return folder / WEIGHTS_FILE


def tokenizer_card(name: str, tokenizer: Tokenizer, figures: dict | None, picture: bool) -> str:
    """README.md for a tokenizer folder: Hub metadata, what it is, its figures, how to use it."""
    meta = {"library_name": "carl", "tags": ["carl", "continuous-tokenizer", f"tokenizer-{name}"]}
    params = sum(p.numel() for p in tokenizer.parameters())
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# A carl `{name}` tokenizer", "",
             f"Maps each sample to {tokenizer.num_tokens} continuous tokens of {tokenizer.token_dim} values "
             f"({params / 1e6:.2f}M parameters). Its latent normalisation was computed from training data, "
             "so the tokens are roughly zero-mean and unit-variance.", ""]
    if figures:
        lines += ["## Training and held-out reconstruction", "", *(f"- {k}: {v}" for k, v in figures.items()), ""]
    if picture:
        lines += ["## Reconstructions", "", "Originals above, reconstructions below.", "", f"![reconstructions]({RECONSTRUCTIONS_FILE})", ""]
    lines += ["## Use", "", "In an AR recipe:", "", "```yaml", "model:",
              f"  tokenizer: {{name: {name}, path: <this folder or repo id>}}", "```", "", "In Python:", "", "```python",
              "from carl.tokenizers.pretrained import load_tokenizer",
              "tokenizer = load_tokenizer('<this folder or repo id>')",
              "tokens = tokenizer.encode(x)    # (B, N, D)", "x_hat = tokenizer.decode(tokens)", "```", ""]
    return "\n".join(lines)


@torch.no_grad()
def reconstruct(tokenizer: Tokenizer, x: torch.Tensor) -> torch.Tensor:
    """``decode(encode(x))`` in eval mode (posterior means)."""
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        return tokenizer.decode(tokenizer.encode(x))
    finally:
        tokenizer.train(was_training)
