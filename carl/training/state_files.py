"""Training state without pickle: nested Python state (optimizer, scheduler, RNG) as safetensors.

``save_tree`` stores every tensor of a nested structure of dicts, lists, tuples, numbers and
strings as a safetensors tensor and the structure itself as JSON in the file's metadata, so
loading runs no code from the file. ``rng_state`` / ``set_rng_state`` capture the Python, NumPy,
torch and CUDA generators in that form.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from carl.errors import StateFileError

TREE_KEY = "carl.tree"


def save_tree(path: Path, tree: Any) -> None:
    """Write ``tree`` to ``path``: its tensors as safetensors, the rest as JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors)
    save_file(tensors, str(path), metadata={TREE_KEY: json.dumps(encoded)})


def load_tree(path: Path) -> Any:
    """Read what :func:`save_tree` wrote (tensors on the CPU).

    Raises:
        StateFileError: naming ``path`` when it is missing, truncated or has no carl structure.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        return _decode(json.loads(metadata[TREE_KEY]), tensors)
    except Exception as exc:  # missing, truncated (safetensors' own error type), or not carl's structure
        raise StateFileError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _encode(torch.from_numpy(np.ascontiguousarray(value)), tensors)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):  # keys may be ints (optimizer state): keep them typed
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a state file")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return _decode(value["__ndarray__"], tensors).numpy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    raise TypeError(f"unexpected entry {sorted(value)} in a state file")


def rng_state() -> dict:
    """This process's random generators: Python, NumPy, torch CPU and (if present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
