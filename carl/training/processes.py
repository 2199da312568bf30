"""Several training processes: checking the launch, spreading a CPU launch, agreeing on results.

``accelerate launch --cpu --num_processes N`` starts *one* process (accelerate's multi-CPU path
is ``mpirun``), and ``torchrun`` on a machine without GPUs starts N processes that each train
alone unless ``ACCELERATE_USE_CPU=1`` tells accelerate to join them with gloo. carl starts the N
processes itself in the first case (:func:`spread_cpu_launch`) and refuses to start in the
second (:func:`check_process_group`), with one line saying what to run instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from carl.errors import CarlError

T = TypeVar("T")
_LAUNCHED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size(environ: dict | None = None) -> int:
    """How many processes the launcher started, from the variables torchrun and MPI set (1: none)."""
    environ = os.environ if environ is None else environ
    for key in _WORLD_ENV:
        if environ.get(key, "").isdigit():
            return int(environ[key])
    return 1


def check_process_group(num_processes: int, environ: dict | None = None) -> None:
    """Refuse a launch whose processes accelerate did not join into one group (they would each
    train alone into the same folder).

    Raises:
        CarlError: one line with the launch to use instead.
    """
    launched = launched_world_size(environ)
    if launched > 1 and num_processes != launched:
        raise CarlError(
            f"{launched} processes were launched but accelerate joined {num_processes} (each would train alone "
            f"into the same folder); on a machine without GPUs set ACCELERATE_USE_CPU=1 for torchrun, or use "
            f"`accelerate launch --cpu --num_processes {launched} -m carl train ...`")


def requested_cpu_processes(environ: dict | None = None, launcher_argv: list[str] | None = None) -> int:
    """The N of ``accelerate launch --cpu --num_processes N`` when accelerate started this single
    process for it (0 when this process was not started that way)."""
    environ = os.environ if environ is None else environ
    if any(key in environ for key in _LAUNCHED_ENV) or "MASTER_PORT" not in environ:
        return 0
    if environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        return 0
    argv = _parent_argv() if launcher_argv is None else launcher_argv
    rest = _accelerate_launch_args(argv)
    if rest is None:
        return 0
    from accelerate.commands.launch import launch_command_parser

    try:
        args, _ = launch_command_parser().parse_known_args(rest)
    except SystemExit:  # argparse on arguments it cannot read: not a launch we understand
        return 0
    if (args.num_machines or 1) > 1:
        raise CarlError("accelerate launch --cpu over several machines starts one process per machine; "
                        "launch carl with mpirun or torchrun on each machine (with ACCELERATE_USE_CPU=1)")
    return args.num_processes if (args.num_processes or 0) > 1 else 0


def spread_cpu_launch(argv: list[str] | None = None) -> int | None:
    """If this process stands for N CPU processes (:func:`requested_cpu_processes`), run the
    command in N gloo processes and return their exit code; None: train in this process."""
    count = requested_cpu_processes()
    if not count:
        return None
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = sys.argv[1:] if argv is None else argv
    print(f"carl: accelerate launch --cpu asked for {count} processes; starting them (gloo)", file=sys.stderr, flush=True)
    args = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(count), "-m", "carl", *argv])
    try:
        run(args)
    except ChildFailedError as exc:  # e.g. 143: the workers checkpointed on SIGTERM and stopped
        return exc.get_first_failure()[1].exitcode or 1
    except SignalException as exc:  # this launcher was signalled; torchrun passed SIGTERM on to the workers
        return 128 + int(exc.sigval)
    return 0


def on_main_process(accelerator, action: Callable[[], T]) -> T | None:
    """Run ``action`` on the main process only and share its outcome: every process gets its
    result (if it can be broadcast) or raises its error, so none waits for a process that failed."""
    outcome: list[Any] = [None, None]
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            outcome[0] = action()
        except Exception as exc:
            error = exc
            outcome[1] = str(exc)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        outcome = broadcast_object_list(outcome)
    if error is not None:
        raise error
    if outcome[1] is not None:
        raise CarlError(outcome[1])
    return outcome[0]


def _parent_argv() -> list[str]:
    try:
        import psutil

        return psutil.Process().parent().cmdline()
    except Exception:  # no parent, no permission: not an accelerate launch we can read
        return []


def _accelerate_launch_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``accelerate launch`` (or ``python -m accelerate.commands.launch``)."""
    for i, arg in enumerate(argv):
        if arg == "accelerate.commands.launch":
            return argv[i + 1:]
        if os.path.basename(arg).startswith("accelerate") and i + 1 < len(argv) and argv[i + 1] == "launch":
            return argv[i + 2:]
    return None
