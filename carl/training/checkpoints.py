"""Self-verifying, pickle-free training checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNNN`` holding the weights and EMA weights
(safetensors), the optimizer, scheduler, gradient-scaler and per-process RNG states (safetensors
through :mod:`carl.training.state_files`), ``trainer_state.json``, the resolved recipe and, written last,
``manifest.json``: the size and SHA-256 of every other file. It is written into a ``.tmp``
folder and renamed when complete. Resuming takes the newest checkpoint whose files all match
their manifest; a damaged one is named with the file at fault, moved aside (``.damaged``) so
that pruning cannot count it as a good one, and the previous checkpoint is used instead.
Nothing on this path unpickles: files a checkpoint does not list (e.g. an ``accelerate``
``*.pkl`` planted in the folder) are never opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from carl.errors import CarlError, CheckpointError, RecipeError
from carl.layout import (
    CHECKPOINTS,
    EMA_FILE,
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    RECIPE_FILE,
    SCALER_FILE,
    SCHEDULER_FILE,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
    free_name,
    rng_file,
    step_name,
    step_of,
)
from carl.training.state_files import load_tree, rng_state, save_tree, set_rng_state

# -- layout ------------------------------------------------------------------------------------


def checkpoint_path(output: Path, step: int) -> Path:
    return Path(output) / CHECKPOINTS / step_name(step)


def list_checkpoints(output: Path) -> list[Path]:
    """The checkpoint folders (not ``.tmp`` or ``.damaged`` ones), oldest first."""
    folder = Path(output) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    step = step_of(path)
    if step is None:
        raise ValueError(f"{path} is not a checkpoint folder name (step-NNNNNNN)")
    return step


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def saved_recipe(output: Path) -> Path | None:
    """The recipe a run saved with its latest checkpoint (what ``--resume`` continues), or None."""
    latest = latest_checkpoint(output)
    path = latest / RECIPE_FILE if latest is not None else None
    return path if path is not None and path.is_file() else None


# -- manifest ----------------------------------------------------------------------------------


def write_manifest(folder: Path, *, step: int, num_processes: int) -> None:
    """Record the size and SHA-256 of every file in ``folder``; written last, so its presence
    means every file was complete."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir())
             if p.is_file() and p.name != MANIFEST_FILE}
    manifest = {"format": 1, "step": step, "num_processes": num_processes, "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def required_files(num_processes: int) -> list[str]:
    return [WEIGHTS_FILE, EMA_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, TRAINER_STATE_FILE, *(rng_file(r) for r in range(num_processes))]


# What trainer_state.json holds (and its type); the trainer adds more, which older checkpoints may lack.
TRAINER_STATE_KEYS = {"step": int, "ema_updates": int, "num_processes": int, "accelerator_step": int,
                      "skipped_nonfinite": int}


def verify(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint (naming the file), or None if it is."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files, num_processes = manifest["files"], int(manifest["num_processes"])
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (not completely written, or written by an older carl)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST_FILE} is unreadable ({type(exc).__name__}: {exc})"
    for name in required_files(num_processes):
        if name not in files:
            return f"{MANIFEST_FILE} does not list {name}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, the manifest says {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return _trainer_state_fault(folder / TRAINER_STATE_FILE)


def _trainer_state_fault(path: Path) -> str | None:
    """Why ``trainer_state.json`` cannot be resumed from (a key missing or of the wrong type), or None."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"{path.name} is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(state, dict):
        return f"{path.name} is not a JSON object"
    for key, kind in TRAINER_STATE_KEYS.items():
        if key not in state:
            return f"{path.name} has no '{key}'"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"{path.name}: '{key}' is {state[key]!r}, not a whole number"
    return None


def choose_checkpoint(output: Path, say: Callable[[str], None] = print) -> Path | None:
    """The newest intact checkpoint (None if there are none at all). Damaged newer ones are
    reported and moved aside to ``step-N.damaged``.

    Raises:
        CheckpointError: checkpoints exist but none is intact (each one's fault is listed).
    """
    damaged: list[tuple[Path, str]] = []
    for candidate in reversed(list_checkpoints(output)):
        reason = verify(candidate)
        if reason is None:
            for bad, why in damaged:
                moved = free_name(bad.with_name(bad.name + ".damaged"))
                os.replace(bad, moved)
                say(f"carl: checkpoint {bad} is damaged: {why}; moved it to {moved.name} and resuming from {candidate.name}")
            return candidate
        damaged.append((candidate, reason))
    if damaged:
        faults = "; ".join(f"{bad.name}: {why}" for bad, why in damaged)
        raise CheckpointError(f"no intact checkpoint in {Path(output) / CHECKPOINTS} to resume from ({faults})")
    return None


def publish(tmp: Path, final: Path) -> None:
    """Rename a completely written ``.tmp`` checkpoint into place."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def check_keep(keep: int) -> None:
    if keep < 1:
        raise RecipeError(f"train.keep_checkpoints: must be at least 1 (the newest checkpoint is always kept), got {keep}")


def prune(output: Path, keep: int, newest: Path) -> list[Path]:
    """Delete checkpoints older than ``newest`` beyond the ``keep`` newest; ``newest`` always stays."""
    check_keep(keep)
    older = [p for p in list_checkpoints(output) if checkpoint_step(p) < checkpoint_step(newest)]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for old in doomed:
        shutil.rmtree(old)
    return doomed


# -- training state ----------------------------------------------------------------------------


def save_training_state(folder: Path, *, model: torch.nn.Module, ema, optimizer, scheduler, scaler,
                        trainer_state: dict) -> None:
    """The main process's part of a checkpoint: weights, EMA, optimizer, scheduler, scaler, counters."""
    save_file(_contiguous(model.state_dict()), str(folder / WEIGHTS_FILE))
    save_file(_contiguous(ema.module.state_dict()), str(folder / EMA_FILE))
    save_tree(folder / OPTIMIZER_FILE, optimizer.state_dict())
    save_tree(folder / SCHEDULER_FILE, scheduler.state_dict())
    if scaler is not None:
        save_tree(folder / SCALER_FILE, scaler.state_dict())
    (folder / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2))


def save_rng(folder: Path, rank: int) -> None:
    """Each process's part: its random generators."""
    save_tree(folder / rng_file(rank), rng_state())


def load_training_state(folder: Path, *, model: torch.nn.Module, ema, optimizer, scheduler, scaler,
                        num_processes: int, rank: int) -> dict:
    """Restore everything :func:`save_training_state` and :func:`save_rng` wrote; returns the
    trainer state (step, EMA updates, ...).

    Raises:
        CheckpointError: naming the file that does not fit this run (other process count,
            other model) or cannot be read.
    """
    fault = _trainer_state_fault(folder / TRAINER_STATE_FILE)
    if fault is not None:
        raise CheckpointError(f"cannot resume from {folder}: {fault}")
    state = json.loads((folder / TRAINER_STATE_FILE).read_text())
    written_by = state["num_processes"]
    if written_by != num_processes:
        raise CheckpointError(f"{folder} was written by {written_by} process(es); resume it with the same number, "
                              f"not {num_processes} (the data order and random states are per process)")
    _load_weights(model, folder / WEIGHTS_FILE)
    _load_weights(ema.module, folder / EMA_FILE)
    ema.n_averaged.fill_(state["ema_updates"])
    _load_with(optimizer, folder / OPTIMIZER_FILE)
    _load_with(scheduler, folder / SCHEDULER_FILE)
    if scaler is not None:
        _load_with(scaler, folder / SCALER_FILE)
    set_rng_state(load_tree(folder / rng_file(rank)))
    return state


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    try:
        module.load_state_dict(load_file(str(path)))
    except Exception as exc:  # a damaged file or a model of another shape: say which file
        raise CheckpointError(f"cannot load {path}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc


def _load_with(owner, path: Path) -> None:
    try:
        owner.load_state_dict(load_tree(path))
    except CarlError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
