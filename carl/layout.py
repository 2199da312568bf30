"""Every file and folder name carl writes, in one place (a leaf: imports nothing from carl).

Four kinds of folder share these names:

- a **model folder** (training output, ``save_pretrained``, ``carl convert``): ``config.json`` +
  ``model.safetensors`` (the Hub mixin's pair), ``carl.json`` (the carl and plugin versions its
  parts need), ``README.md`` (the card) and, when carl trained it, ``recipe.yaml``,
  ``results.json`` and ``samples.png``;
- a **tokenizer folder**: ``config.json``, ``model.safetensors``, ``README.md``, ``recipe.yaml``,
  ``reconstructions.png``;
- a **run folder** (a training run's output): a model or tokenizer folder plus ``samples/``
  (grids along the way), ``logs/`` (TensorBoard), ``checkpoints/step-NNNNNNN/`` and ``.carl/``
  (carl's marker: ``run.json``, the ``lock``);
- a **checkpoint** ``checkpoints/step-NNNNNNN/``: weights, EMA, optimizer, scheduler, scaler,
  per-process RNG states, ``trainer_state.json``, ``recipe.yaml`` and ``manifest.json``
  (written last); a **token cache**: ``shard-NNNNN/`` tables, ``tokenizer.safetensors``,
  ``cache.json`` (written last).
"""

from __future__ import annotations

import re
from pathlib import Path

# -- model and tokenizer folders ------------------------------------------------------------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REQUIREMENTS_FILE = "carl.json"
CARD_FILE = "README.md"
RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
# What `carl push` publishes of a model folder (never its checkpoints or logs).
PUBLISHED = (CONFIG_FILE, WEIGHTS_FILE, RECIPE_FILE, REQUIREMENTS_FILE, RESULTS_FILE, CARD_FILE, SAMPLES_FILE)

# -- run folders -----------------------------------------------------------------------------------
STATE_DIR = ".carl"  # carl's marker: a folder is a carl run only if this holds RUN_FILE
RUN_FILE = "run.json"
LOCK_FILE = "lock"
LOGS = "logs"
SAMPLES_DIR = "samples"
CHECKPOINTS = "checkpoints"
RUN_TOKEN_CACHE = "token-cache"  # `cache: auto`: the run's own token cache
# Every top-level entry a training run writes: what `--overwrite` clears in carl's own run and
# moves aside (NAME.orig) in a folder that is not.
RUN_OUTPUTS = (CHECKPOINTS, SAMPLES_DIR, LOGS, SAMPLES_FILE, RECONSTRUCTIONS_FILE, CONFIG_FILE, WEIGHTS_FILE, RECIPE_FILE,
               REQUIREMENTS_FILE, RESULTS_FILE, CARD_FILE, RUN_TOKEN_CACHE)

# -- checkpoints -----------------------------------------------------------------------------------
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.safetensors"
SCALER_FILE = "scaler.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
_STEP = re.compile(r"step-(\d+)")


def step_name(step: int) -> str:
    """``step-0000042``: the name of step 42's checkpoint folder and of its sample grid (+ ``.png``)."""
    return f"step-{step:07d}"


def step_of(name: str | Path) -> int | None:
    """The step a checkpoint folder's name gives (``step-0000042`` -> 42), or None for any other name
    (``step-42.tmp``, ``step-42.damaged``)."""
    match = _STEP.fullmatch(Path(name).name)
    return int(match.group(1)) if match else None


def rng_file(rank: int) -> str:
    """The random-generator states of process ``rank`` in a checkpoint."""
    return f"rng-{rank}.safetensors"


# -- token caches ----------------------------------------------------------------------------------
CACHE_MANIFEST = "cache.json"
CACHE_TOKENIZER_FILE = "tokenizer.safetensors"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


# -- names beside existing files -----------------------------------------------------------------


def free_name(path: Path) -> Path:
    """``path`` if nothing is there (not even a dangling link), else ``path-2``, ``path-3``, ...:
    where to move something aside without replacing anything."""
    candidate, n = Path(path), 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
