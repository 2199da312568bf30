import pytest

from carl.testing import only_plugins


@pytest.fixture(autouse=True, scope="module")
def timeseries_plugin():
    """Load the plugin through its entry point (the core suite loads none)."""
    with only_plugins("timeseries"):
        yield
