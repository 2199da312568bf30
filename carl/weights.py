"""Pretrained weights from local files or the Hugging Face Hub, loaded strictly."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from torch import nn

from carl.errors import WeightsError

HUB_URL = re.compile(r"https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<revision>[^/]+)/(?P<file>.+)")


def resolve_weights(reference: str | Path, default_filename: str) -> Path:
    """A local weights file for ``reference``: a file, a folder holding ``default_filename``, a
    Hub file URL, ``hf://user/repo/file``, ``user/repo/file`` or ``user/repo`` (the file named
    ``default_filename``). Hub files are downloaded once into the Hub cache."""
    path = Path(reference)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / default_filename).is_file():
            return path / default_filename
        raise WeightsError(f"{path} holds no {default_filename}")
    text = str(reference)
    revision = None
    if match := HUB_URL.fullmatch(text):
        repo, revision, filename = match["repo"], match["revision"], match["file"]
    else:
        parts = text.removeprefix("hf://").split("/")
        if len(parts) < 2 or text.startswith(("/", ".")):
            raise WeightsError(f"weights '{text}': no such file, and not a Hub reference (user/repo[/file])")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or default_filename
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as exc:  # offline, unknown repo, missing file: one clear line
        raise WeightsError(f"cannot get weights '{text}' ({repo}/{filename}) locally or from the Hub: {type(exc).__name__}: {exc}") from exc


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint (the dict under ``model`` when
    present), read with ``weights_only=True``: never unpickles code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy ``state`` into ``module``; refuse missing keys, unexpected keys and shape changes,
    listing the first few of each."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [(name, items) for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
    if problems:
        detail = "; ".join(f"{len(items)} {name}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}" for name, items in problems)
        raise WeightsError(f"{source} does not fit {type(module).__name__}: {detail}")
    module.load_state_dict(state, strict=True)


def first_nonfinite(module: nn.Module) -> str | None:
    """The name of the first floating-point weight or buffer of ``module`` holding NaN or an
    infinity, or None when every value is finite."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
