"""What a person at a terminal sees: whether to draw progress bars, and figures written for
people (a leaf: imports nothing from carl).

A progress bar is drawn only when asked for *and* stderr is a terminal: output sent to a file or
a pipe gets plain lines, never ``\\r`` redraws.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def interactive(progress: bool = True, stream=None) -> bool:
    """Whether to draw a progress bar: only when asked and ``stream`` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(progress) and bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable=None, *, progress: bool = True, **options) -> tqdm:
    """A tqdm bar that draws itself only where :func:`interactive` says so (it still counts)."""
    return tqdm(iterable, disable=not interactive(progress), **options)


def duration(seconds: float) -> str:
    """``4.2 s`` under a minute, ``1:02:03`` (h:mm:ss) from there on."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def size(num_bytes: int) -> str:
    """``512 B``, ``3.4 KB``, ``1.2 MB``, ``2.0 GB``."""
    value = float(num_bytes)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
