"""A training run owns its output folder.

Before the first step a run *claims* the folder: it refuses a non-empty folder it did not create
(unless told to ``overwrite``, which still deletes nothing carl did not write), proves the folder
is writable, and takes a lock so that a second run on the same folder fails at once. The lock
names the process holding it; a lock whose process is gone (a killed run) is taken over. The
folder's ``.carl/run.json`` records that carl created it and how the last run ended.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from carl.errors import CarlError, FolderInUse
from carl.layout import CHECKPOINTS, LOCK_FILE, RUN_FILE, RUN_OUTPUTS, STATE_DIR, free_name
from carl.version import __version__


class RunFolder:
    """The claimed output folder of one training run (main process only)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.state_dir = self.path / STATE_DIR

    @classmethod
    def claim(cls, path: Path, *, resume: bool = False, overwrite: bool = False,
              say: Callable[[str], None] = print) -> "RunFolder":
        """Check, lock and take ``path`` for a run.

        Args:
            path: the output folder (created if missing).
            resume: the run continues the carl run already in the folder.
            overwrite: start a new run in a non-empty folder: carl's own earlier outputs are
                cleared, other files are kept (one whose name carl writes is renamed ``NAME.orig``).
            say: where to report what was cleared, moved or taken over.

        Raises:
            CarlError: one line naming the folder: not a folder, not writable, not carl's,
                already holds a run, or in use by another process (:class:`FolderInUse`).
        """
        if resume and overwrite:
            raise CarlError("--resume continues the run in the output folder and --overwrite starts a new one (resume=True / "
                            "overwrite=True in Python): choose one")
        folder = cls(path)
        folder._make()
        folder._check_lock(say)
        folder._check_contents(resume=resume, overwrite=overwrite)
        folder._take_lock(say)
        if overwrite:
            folder._clear(say)
        folder.set_status("running")
        return folder

    # -- checks ------------------------------------------------------------------------------

    def _make(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise CarlError(f"the output {self.path} is a file, not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file" if blocker else exc.strerror
            raise CarlError(f"cannot create the output folder {self.path}: {why}") from exc

    def _check_contents(self, *, resume: bool, overwrite: bool) -> None:
        entries = sorted(p.name for p in self.path.iterdir() if p.name != STATE_DIR)
        if not entries or overwrite:
            return
        listing = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        if not self.is_carl_run():
            what = "--resume: it holds no carl run" if resume else "it is not empty and was not created by carl"
            raise CarlError(f"{self.path}: {what} (it holds {listing}); choose a new or empty --output, or pass "
                            f"--overwrite (overwrite=True in Python) to write into it (your files are kept; any named "
                            f"like carl's outputs are renamed to NAME.orig)")
        if resume:
            return
        if (self.path / CHECKPOINTS).is_dir() and any((self.path / CHECKPOINTS).iterdir()):
            raise CarlError(f"{self.path} already holds checkpoints; pass --resume to continue that run, "
                            f"--overwrite to start it again (resume=True / overwrite=True in Python), or choose "
                            f"another --output")
        raise CarlError(f"{self.path} holds an earlier carl run ({listing}); pass --overwrite to start again "
                        f"(or --resume; overwrite=True / resume=True in Python), or choose another --output")

    def is_carl_run(self) -> bool:
        """Whether carl created this folder: only carl's own marker ``.carl/run.json`` says so. A folder
        that merely looks like a run (``checkpoints/``, ``recipe.yaml``) is the user's."""
        return (self.state_dir / RUN_FILE).is_file()

    # -- the lock ----------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.state_dir / LOCK_FILE

    def _check_lock(self, say: Callable[[str], None]) -> None:
        holder = read_lock(self.lock_path)
        if holder is None:
            return
        if not lock_is_stale(holder):
            raise FolderInUse(_in_use(self.path, self.lock_path, holder))
        # Take the stale lock over atomically: only one process can rename it away. If what was
        # renamed is not the lock read above (another run took it over in between), put it back.
        aside = self.lock_path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:  # another process took it over first: its fresh lock decides
            holder = read_lock(self.lock_path)
            if holder is not None:
                raise FolderInUse(_in_use(self.path, self.lock_path, holder)) from None
            return
        taken = _read_json(aside) or {}
        if taken != holder:
            try:
                os.link(aside, self.lock_path)
            finally:
                aside.unlink(missing_ok=True)
            raise FolderInUse(_in_use(self.path, self.lock_path, taken))
        aside.unlink(missing_ok=True)
        say(f"carl: taking over the lock of process {holder.get('pid')}, which is no longer running ({self.lock_path})")

    def _take_lock(self, say: Callable[[str], None]) -> None:
        """Create the lock atomically with its content (write a private file, hard-link it into place)."""
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            self.state_dir.mkdir(exist_ok=True)
            tmp = self.state_dir / f"{LOCK_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(mine))
            try:
                os.link(tmp, self.lock_path)
            finally:
                tmp.unlink(missing_ok=True)
        except FileExistsError:  # another run took it between the check and now
            raise FolderInUse(_in_use(self.path, self.lock_path, read_lock(self.lock_path) or {})) from None
        except OSError as exc:
            raise CarlError(f"cannot write to the output folder {self.path}: {exc.strerror or exc}") from exc

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        holder = read_lock(self.lock_path)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    # -- contents ----------------------------------------------------------------------------

    def _clear(self, say: Callable[[str], None]) -> None:
        """``--overwrite``: remove carl's own earlier outputs, move same-named foreign files aside."""
        ours = self.is_carl_run()
        for name in RUN_OUTPUTS:
            entry = self.path / name
            if not entry.exists() and not entry.is_symlink():
                continue
            if ours and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif ours:
                entry.unlink()
            else:
                target = free_name(entry.with_name(entry.name + ".orig"))
                entry.rename(target)
                say(f"carl: moved {entry} to {target} (--overwrite keeps files carl did not write)")
        if ours:
            say(f"carl: --overwrite: cleared the earlier run's outputs in {self.path}")

    def set_status(self, status: str, **details) -> None:
        """Record the run's state (``running``, ``finished``, ``interrupted``, ``failed``) in ``.carl/run.json``."""
        path = self.state_dir / RUN_FILE
        record = _read_json(path) or {}

        record.setdefault("created", time.strftime("%Y-%m-%d %H:%M:%S"))
        record.update({"carl": __version__, "status": status, **details})
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)

    def status(self) -> dict:
        return _read_json(self.state_dir / RUN_FILE) or {}


def read_lock(path: Path) -> dict | None:
    """The lock's holder (pid, host, since), ``{}`` if unreadable, ``None`` if there is no lock."""
    if not path.exists():
        return None
    return _read_json(path) or {}


def lock_is_stale(holder: dict) -> bool:
    """True when the holder ran on this host and its process is gone. A lock from another host
    cannot be checked and is never taken over."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _in_use(folder: Path, lock: Path, holder: dict) -> str:
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
    return (f"{folder} is in use by another carl run ({who}); wait for it to end or choose another --output "
            f"(if no run uses it, delete {lock})")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
