"""Every file and folder name carl writes (:mod:`carl.layout`): the checkpoint pattern both ways,
and names beside existing files that never replace anything."""

import os

import pytest

from carl.layout import CHECKPOINTS, PUBLISHED, RUN_OUTPUTS, free_name, rng_file, shard_name, step_name, step_of


@pytest.mark.parametrize("step", [0, 2, 42, 1_234_567, 99_999_999])
def test_a_step_name_reads_back_as_its_step(step):
    assert step_of(step_name(step)) == step
    assert step_of(f"/runs/x/{CHECKPOINTS}/{step_name(step)}") == step  # a path: its last part counts


def test_step_names_have_seven_digits_and_sort_by_step():
    assert step_name(42) == "step-0000042"
    names = [step_name(s) for s in (3, 20, 100, 9)]
    assert sorted(names) == [step_name(s) for s in (3, 9, 20, 100)]


@pytest.mark.parametrize("name", ["step-0000042.tmp", "step-0000042.damaged", "step-", "step-x", "Step-0000042",
                                  "samples", "step-0000042-2"])
def test_only_a_checkpoint_name_has_a_step(name):
    assert step_of(name) is None


def test_per_process_and_shard_names():
    assert [rng_file(r) for r in (0, 3)] == ["rng-0.safetensors", "rng-3.safetensors"]
    assert [shard_name(i) for i in (0, 12)] == ["shard-00000", "shard-00012"]


def test_a_push_never_publishes_checkpoints_or_logs():
    assert "model.safetensors" in PUBLISHED and "config.json" in PUBLISHED
    assert not {CHECKPOINTS, "logs", "samples"} & set(PUBLISHED)
    assert set(PUBLISHED) <= set(RUN_OUTPUTS)  # whatever is published, a run writes


def test_a_free_name_is_the_name_itself_or_the_next_numbered_one(tmp_path):
    target = tmp_path / "README.md.orig"
    assert free_name(target) == target
    target.write_text("taken")
    assert free_name(target) == tmp_path / "README.md.orig-2"
    (tmp_path / "README.md.orig-2").mkdir()  # a folder takes a name too
    assert free_name(target) == tmp_path / "README.md.orig-3"
    os.symlink(tmp_path / "nowhere", tmp_path / "README.md.orig-3")  # and so does a dangling link
    assert free_name(target) == tmp_path / "README.md.orig-4"
