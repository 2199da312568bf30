import os

import pytest

from carl.testing import only_plugins

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def image_plugin():
    """Load the image plugin through its entry point (the core suite loads none)."""
    with only_plugins("image_ear"):
        yield
