import pytest

from carl.testing import only_plugins


@pytest.fixture(autouse=True, scope="module")
def timeseries_plugin():
    """Load the plugin through its entry point (the core suite loads none)."""
    with only_plugins("timeseries"):
        yield


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process, so a run in the ts-forecaster recipe's
    bf16 would refuse to follow one in fp32 (and the other way round): forget it around each test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()
