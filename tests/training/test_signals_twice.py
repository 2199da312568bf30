"""The same stop signal twice stops at once, with the exit code of that signal (130 / 143)."""

import os
import signal

import pytest

from carl.errors import StoppedAtOnce
from carl.training.signals import StopOnSignal


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_second_signal_stops_with_its_own_exit_code(signum, code, capsys, monkeypatch):
    import carl.cli.program as program

    with StopOnSignal():
        os.kill(os.getpid(), signum)
        with pytest.raises(StoppedAtOnce) as stopped:
            os.kill(os.getpid(), signum)
    assert stopped.value.exit_code == code and isinstance(stopped.value, KeyboardInterrupt)

    def app(**kwargs):
        raise StoppedAtOnce(signum)

    monkeypatch.setattr(program, "app", app)
    monkeypatch.setattr("carl.plugins.register_commands", lambda app: None)
    with pytest.raises(SystemExit) as exit_:
        program.main(["train", "tiny"])
    assert exit_.value.code == code
