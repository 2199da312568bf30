"""`cache: auto`: a run encodes its training data once into its own token cache
(``<output>/token-cache``) instead of running the frozen tokenizer in every epoch."""

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import carl
from carl.cli import app
from carl.layout import CACHE_MANIFEST, RUN_TOKEN_CACHE, WEIGHTS_FILE

QUIET = ["train.tracker=none", "train.sample_every=null"]
STEPS = ["train.max_steps=6", *QUIET]


def test_training_from_the_run_cache_matches_encoding_every_batch(tmp_path, capsys):
    """The same items, order and tokens (the patch tokenizer is deterministic): the same weights."""
    encoded = carl.train("tiny", STEPS, output=tmp_path / "encoded", progress=False)
    cached = carl.train("tiny", [*STEPS, "cache=auto"], output=tmp_path / "cached", progress=False)
    assert (cached / RUN_TOKEN_CACHE / CACHE_MANIFEST).exists()
    out = capsys.readouterr().out
    assert "carl: encoded the 512 training items once into" in out and "Saving the dataset" not in out
    assert "token-cache/   the training data, encoded once" in out  # the closing summary lists it
    a, b = load_file(encoded / WEIGHTS_FILE), load_file(cached / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_reads_the_cache_again_and_overwrite_encodes_afresh(tmp_path, capsys):
    steps = [*QUIET, "cache=auto", "train.checkpoint_every=3"]
    carl.train("tiny", [*steps, "train.max_steps=6"], output=tmp_path, progress=False)
    manifest = tmp_path / RUN_TOKEN_CACHE / CACHE_MANIFEST
    made = manifest.stat().st_mtime_ns
    capsys.readouterr()
    carl.train("tiny", [*steps, "train.max_steps=9"], output=tmp_path, progress=False, resume=True)
    assert "encoded the" not in capsys.readouterr().out and manifest.stat().st_mtime_ns == made
    carl.train("tiny", [*steps, "train.max_steps=3"], output=tmp_path, progress=False, overwrite=True)
    assert "encoded the" in capsys.readouterr().out


def test_carl_cache_asks_for_a_folder_when_the_recipe_says_auto():
    result = CliRunner().invoke(app, ["cache", "tiny", "cache=auto"])
    assert result.exit_code != 0
    assert str(result.exception).startswith("the recipe sets `cache: auto`, which each training run encodes into its own "
                                             "output folder: pass --output DIR")


@pytest.mark.parametrize("cache", ["auto", None])
def test_the_recipe_records_what_it_was_given(tmp_path, cache):
    """recipe.yaml keeps `auto`, not the folder, so the recipe runs again anywhere."""
    overrides = [*QUIET, "train.max_steps=1"] + ([f"cache={cache}"] if cache else [])
    folder = carl.train("tiny", overrides, output=tmp_path, progress=False)
    recipe = (folder / "recipe.yaml").read_text()
    assert ("cache: auto" in recipe) == (cache == "auto")
