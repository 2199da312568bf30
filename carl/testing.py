"""Helpers for testing carl plugins."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from carl.plugins import load_plugins


@contextmanager
def only_plugins(*names: str) -> Iterator[None]:
    """Load exactly the named plugins (through their entry points) for the duration of the block:

        @pytest.fixture(autouse=True, scope="module")
        def my_plugin():
            with only_plugins("my_modality"):
                yield
    """
    previous = os.environ.get("CARL_PLUGINS")
    os.environ["CARL_PLUGINS"] = ",".join(names)
    load_plugins(force=True)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CARL_PLUGINS", None)
        else:
            os.environ["CARL_PLUGINS"] = previous
        load_plugins(force=True)


def options_without_help(app: Any) -> list[str]:
    """Every option and argument of a typer app (its commands and sub-apps) without help text,
    as ``"carl sample --seed"``: a test of a plugin's commands asserts this is empty."""
    import typer

    def walk(command: Any, path: str) -> list[str]:
        missing = [f"{path} {param.opts[0] if param.opts else param.name}" for param in command.params
                   if not getattr(param, "help", None) and param.name != "help"]
        for name, sub in getattr(command, "commands", {}).items():
            missing += walk(sub, f"{path} {name}")
        return missing

    return walk(typer.main.get_command(app), "carl")
