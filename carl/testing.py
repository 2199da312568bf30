"""Helpers for testing carl plugins."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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
