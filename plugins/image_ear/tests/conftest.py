import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def image_plugin():
    """Load the image plugin through its entry point (the core suite loads none)."""
    from carl.plugins import load_plugins

    previous = os.environ.get("CARL_PLUGINS")
    os.environ["CARL_PLUGINS"] = "image_ear"
    load_plugins(force=True)
    yield
    if previous is None:
        del os.environ["CARL_PLUGINS"]
    else:
        os.environ["CARL_PLUGINS"] = previous
    load_plugins(force=True)
