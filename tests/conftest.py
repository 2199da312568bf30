"""Settings and fixtures shared by the whole core suite.

The trained folders below are module-scoped on purpose: each test module that asks for one trains
its own, so that mutation testing (mutmut credits what a fixture runs to the first test that asks
for it) credits one test per module, as when each module had its own copy."""

import os

import pytest

# The core suite loads no entry points (built-ins still register), so installed plugins cannot
# break it; plugin suites opt in with their own fixture.
os.environ.setdefault("CARL_PLUGINS", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """A finished tiny run of 6 steps with three checkpoints (steps 2, 4 and 6)."""
    import carl

    out = tmp_path_factory.mktemp("run")
    return carl.train("tiny", {"train.max_steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 3},
                      output=out, progress=False)


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A finished tiny run of 4 steps with two checkpoints (steps 2 and 4)."""
    import carl

    out = tmp_path_factory.mktemp("run")
    return carl.train("tiny", {"train.max_steps": 4, "train.checkpoint_every": 2}, output=out, progress=False)


@pytest.fixture(scope="session")
def tiny_ae(tmp_path_factory):
    """The shipped tiny-ae recipe, trained briefly: a 1-D tokenizer folder (trained once per session:
    its tests only read it, or copy it first)."""
    from carl.api import train
    from carl.config import load_recipe

    from helpers import FAST_AE

    out = tmp_path_factory.mktemp("tiny-ae")
    return train(load_recipe("tiny-ae", FAST_AE), output=out, progress=False)
