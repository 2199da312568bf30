import os

import pytest


@pytest.fixture(autouse=True, scope="module")
def timeseries_plugin():
    """Load the plugin through its entry point (the core suite loads none)."""
    from carl.plugins import load_plugins

    previous = os.environ.get("CARL_PLUGINS")
    os.environ["CARL_PLUGINS"] = "timeseries"
    load_plugins(force=True)
    yield
    if previous is None:
        del os.environ["CARL_PLUGINS"]
    else:
        os.environ["CARL_PLUGINS"] = previous
    load_plugins(force=True)
