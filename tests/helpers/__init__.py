"""Helpers shared by the tests (fixtures are in the conftest.py files): tiny configurations, spies
and small fakes. Topic modules: :mod:`helpers.scores`, :mod:`helpers.models`, :mod:`helpers.pickles`."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from carl.config import ModelConfig, from_dict
from carl.errors import CarlError

# The shipped tiny-ae recipe, trained briefly (the `tiny_ae` fixture and the tokenizer job's tests).
FAST_AE = ["train.max_steps=80", "train.checkpoint_every=40", "train.lr_schedule=constant"]


def tiny_model_config(order: str = "masked", score: dict | None = None, conditioner: str = "class", **backbone) -> ModelConfig:
    return from_dict(
        ModelConfig,
        {
            "tokenizer": {"name": "patch", "shape": [8, 2], "patch": [1], "normalize": False},
            "conditioner": {"name": conditioner, **({"num_classes": 4, "buffer": 2} if conditioner == "class" else {})},
            "order": {"name": order},
            "backbone": {"width": 16, "depth": 2, "heads": 2, "dropout": 0.0, "attn_dropout": 0.0, **backbone},
            "score": score or {"name": "energy", "depth": 1, "width": 16, "noise_dim": 4},
        },
    )


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``carl ARGV`` in this process, as the ``carl`` program runs it: (exit code, stdout, stderr)."""
    from carl.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def spy(monkeypatch, owner, name: str) -> list:
    """Record every call of ``owner.name`` (args, kwargs) and let it run."""
    calls, original = [], getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def copy(trained: Path, into: Path, *, checkpoints: bool = False) -> Path:
    shutil.copytree(trained, into, ignore=None if checkpoints else shutil.ignore_patterns("checkpoints"))
    return into


def message(call, *args) -> str:
    with pytest.raises(CarlError) as caught:
        call(*args)
    return str(caught.value)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True
