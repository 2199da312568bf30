"""What a person at a terminal sees (:mod:`carl.progress`): a bar only on a terminal, durations and
sizes written for people."""

import io

import pytest

from carl.progress import bar, duration, interactive, size

from helpers import Terminal


def test_interactive_only_on_a_terminal():
    assert interactive(True, Terminal()) and not interactive(False, Terminal()) and not interactive(True, io.StringIO())


def test_durations_in_seconds_under_a_minute_then_hours_minutes_and_seconds():
    assert duration(4.25) == "4.2 s" and duration(3723) == "1:02:03"
    assert duration(59.94) == "59.9 s" and duration(60) == "0:01:00"


@pytest.mark.parametrize("num_bytes, text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KB"), (3482, "3.4 KB"),
    (int(1.2 * 1024**2), "1.2 MB"), (1024**3, "1.0 GB"), (5 * 1024**4, "5120.0 GB"),
])
def test_sizes_in_bytes_kilobytes_megabytes_and_gigabytes(num_bytes, text):
    assert size(num_bytes) == text


def test_a_bar_counts_but_draws_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    quiet = bar(range(3), progress=True)
    assert quiet.disable and list(quiet) == [0, 1, 2]
    monkeypatch.setattr("sys.stderr", Terminal())
    assert not bar(range(3), progress=True, file=Terminal()).disable
    assert bar(range(3), progress=False).disable
