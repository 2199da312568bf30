"""Token caches: a dataset encoded once by the recipe's tokenizer, stored as Arrow shards.

``carl cache RECIPE`` writes ``<cache>/shard-NNNNN`` folders (``datasets`` tables, written to a
``.tmp`` name and renamed when complete), the tokenizer's state (``tokenizer.safetensors``,
so training decodes with exactly the weights that encoded) and ``cache.json`` once every row is
there. An interrupted run resumes at the first missing shard. Training reads the cache when the
recipe's ``cache`` folder is complete; ``cache: auto`` gives a run its own (:func:`run_cache`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from datasets import Array2D, Array3D, Array4D, Dataset, Features, Value, concatenate_datasets, load_from_disk
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset

from carl.config import RecipeConfig, to_dict
from carl.errors import CarlError
from carl.layout import CACHE_MANIFEST, CACHE_TOKENIZER_FILE, RUN_TOKEN_CACHE, shard_name
from carl.progress import bar as progress_bar
from carl.tokenizers.base import Tokenizer, prepare_tokenizer
from carl.training.checks import check_data_fits

ARRAYS = {2: Array2D, 3: Array3D, 4: Array4D}
AUTO = "auto"  # `cache: auto`: the run's own cache in its output folder


def cache_key(cfg: RecipeConfig) -> dict:
    """What a cache depends on: the tokenizer and the data. A cache made for other settings is refused."""
    return {"tokenizer": to_dict(cfg.model.tokenizer), "data": to_dict(cfg.data)}


def _features(columns: dict[str, np.ndarray]) -> Features:
    features = {}
    for name, values in columns.items():
        if values.ndim == 1:
            features[name] = Value("int64" if values.dtype.kind in "iu" else "float32")
        else:
            features[name] = ARRAYS[values.ndim - 1](values.shape[1:], "float32")
    return Features(features)


@contextmanager
def quiet_datasets(quiet: bool):
    """Without ``datasets``' own progress bars (``Saving the dataset ...``) where carl shows none."""
    was_disabled = datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            datasets.enable_progress_bars()


def build_cache(cfg: RecipeConfig, folder: Path, *, batch_size: int = 64, shard_size: int = 4096, progress: bool = True) -> Path:
    """Encode the recipe's training data into ``folder`` (resuming a partial cache there)."""
    if batch_size < 1 or shard_size < 1:
        raise CarlError(f"batch size {batch_size} and shard size {shard_size} must be >= 1")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / CACHE_MANIFEST
    if manifest.exists():
        if json.loads(manifest.read_text())["key"] != cache_key(cfg):
            raise CarlError(f"{folder} holds a cache made with another tokenizer or data; choose another folder")
        print(f"carl: {folder} is already complete")
        return folder
    source = cfg.data.build("datasets")
    dataset = source.dataset("train")
    tokenizer: Tokenizer = cfg.model.tokenizer.build("tokenizers").eval()
    check_data_fits(source, dataset, tokenizer, data=cfg.data.name, tokenizer_name=cfg.model.tokenizer.name)
    state_file = folder / CACHE_TOKENIZER_FILE
    if state_file.exists():  # resuming: the very state that encoded the first shards
        tokenizer.load_state_dict(load_file(state_file))
    else:
        prepare_tokenizer(tokenizer, dataset)
        save_file({k: v.contiguous() for k, v in tokenizer.state_dict().items()}, state_file)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer.to(device)

    shards = range(0, len(dataset), shard_size)
    done = [i for i, _ in enumerate(shards) if (folder / shard_name(i)).exists()]
    first = len(done)  # shards are written in order; a .tmp one is incomplete and redone
    bar = progress_bar(total=len(dataset), initial=min(first * shard_size, len(dataset)), desc="caching", unit="item",
                       progress=progress)
    start, rows = time.perf_counter(), 0
    for index, begin in enumerate(shards):
        if index < first:
            continue
        subset = Subset(dataset, range(begin, min(begin + shard_size, len(dataset))))
        columns: dict[str, list[np.ndarray]] = {}
        for batch in DataLoader(subset, batch_size=batch_size, num_workers=cfg.train.num_workers):
            with torch.no_grad():
                out = tokenizer.cache(batch["data"].to(device))
            if "condition" in batch:
                out["condition"] = batch["condition"]
            for name, value in out.items():
                columns.setdefault(name, []).append(value.cpu().numpy())
            bar.update(len(batch["data"]))
            rows += len(batch["data"])
            bar.set_postfix({"items/s": f"{rows / (time.perf_counter() - start):.1f}"})
        arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
        final = folder / shard_name(index)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with quiet_datasets(not progress):
            Dataset.from_dict(arrays, features=_features(arrays)).save_to_disk(str(tmp))
        os.replace(tmp, final)
        if progress and bar.disable:  # not a terminal: one plain line per shard instead of bar redraws
            print(f"caching: shard {index + 1}/{len(shards)} written ({min(begin + shard_size, len(dataset))}/{len(dataset)} "
                  f"items, {rows / (time.perf_counter() - start):.1f} items/s)", flush=True)
    bar.close()
    manifest.write_text(json.dumps({"key": cache_key(cfg), "rows": len(dataset), "shards": len(shards)}, indent=2))
    return folder


def run_cache(cfg: RecipeConfig) -> Path:
    """``cache: auto``: the run's own token cache, ``<output>/token-cache``. The frozen tokenizer
    would otherwise encode every item again in every epoch; encoded once before the first step (by
    the main process while the others wait), it is read again by ``--resume`` and cleared by
    ``--overwrite``."""
    folder = Path(cfg.output) / RUN_TOKEN_CACHE
    with PartialState().main_process_first():
        if not is_complete(folder):
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):  # the model's initialisation must not depend on whether it ran
                build_cache(cfg, folder, progress=False)
            rows = json.loads((folder / CACHE_MANIFEST).read_text())["rows"]
            print(f"carl: encoded the {rows} training items once into {folder} in {time.perf_counter() - start:.1f} s", flush=True)
    return folder


def is_complete(folder: Path) -> bool:
    return (folder / CACHE_MANIFEST).exists()


def load_cache(cfg: RecipeConfig, folder: Path) -> tuple[Dataset, dict[str, torch.Tensor]]:
    """The cached rows (torch format) and the tokenizer state that made them."""
    manifest = json.loads((folder / CACHE_MANIFEST).read_text())
    if manifest["key"] != cache_key(cfg):
        raise CarlError(f"the cache in {folder} was made with another tokenizer or data than this recipe; "
                        f"rebuild it with `carl cache` or point `cache` elsewhere")
    shards = [load_from_disk(str(folder / shard_name(i))) for i in range(manifest["shards"])]
    return concatenate_datasets(shards).with_format("torch"), load_file(folder / CACHE_TOKENIZER_FILE)
