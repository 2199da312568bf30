"""SIGINT and SIGTERM (Ctrl-C, a cluster's pre-emption) end a run cleanly at a step boundary.

While training, the first SIGINT or SIGTERM only sets a flag; the loop reads it after each
optimizer step, writes a checkpoint and raises :class:`TrainingInterrupted`, which the command
line turns into the exit code a shell expects of that signal (130, 143). The same signal again
aborts at once. With several processes they agree on the step to stop at, so that all of them
write the same checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch
import torch.distributed as dist

from carl.errors import StoppedAtOnce, TrainingInterrupted  # noqa: F401 (TrainingInterrupted: re-exported)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """A context manager that turns SIGINT / SIGTERM into a stop request read at step boundaries.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signum:  # the same signal twice: stop now, without a checkpoint
            raise StoppedAtOnce(signum)
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            print(f"carl: {name} received; stopping after this step with a checkpoint ({name} again: stop at once)",
                  file=sys.stderr, flush=True)

    def requested(self, num_processes: int = 1, device: torch.device | str = "cpu") -> int | None:
        """The signal to stop on, agreed by all processes (one small all-reduce per call when
        there are several), or None to go on."""
        signum = self.signum or 0
        if num_processes > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor(float(signum), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum or None
