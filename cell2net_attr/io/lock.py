"""One writer per output: a lock file beside it, created atomically, released on every exit.

``.<output>.lock`` holds who writes (pid, host, start). It is made with ``O_CREAT | O_EXCL``, which is
atomic on local and network file systems alike (no ``flock``, so it works where HDF5 locking is off).
A lock whose process is gone (same host, no such pid) or that cannot be read and is old is stale and
taken over, with a warning.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from ..errors import UserError

#: A lock file that cannot be read is someone's half-written lock for this long, then stale.
UNREADABLE_GRACE = 60.0


def lock_path(out: Path) -> Path:
    """The hidden lock file beside ``out``."""
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """The exclusive right to write ``out`` (and its resumable chunks)."""

    def __init__(self, out: Path) -> None:
        self.out, self.path = Path(out), lock_path(Path(out))
        self.mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        self.held = False

    def try_acquire(self) -> str | None:
        """Take the lock; ``None`` on success, else a description of the holder."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, stale = self._holder()
                if not stale:
                    return holder
                warnings.warn(f"taking over the stale lock {self.path} ({holder})", stacklevel=2)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise UserError(f"cannot create the lock file {self.path.name} ({exc.strerror})", self.out) from exc
            with os.fdopen(fd, "w") as fh:
                fh.write(self.mine)
            self.held = True
            return None
        return "a run that keeps re-taking it"

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`UserError` naming the holder."""
        holder = self.try_acquire()
        if holder is not None:
            raise UserError(f"another run is writing this output ({holder}); wait for it, or remove {self.path} "
                            f"if that run is gone", self.out)
        return self

    def release(self) -> None:
        """Remove the lock file, if it is still ours."""
        if not self.held:
            return
        self.held = False
        try:
            if self.path.read_text() == self.mine:
                self.path.unlink()
        except OSError:
            pass

    def _holder(self) -> tuple[str, bool]:
        """Who holds the lock, and whether that holder is gone."""
        try:
            info = json.loads(self.path.read_text())
            pid, host, started = int(info["pid"]), str(info["host"]), float(info["started"])
        except (OSError, ValueError, KeyError, TypeError):
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return "a run that just finished", True
            return "an unreadable lock file", age > UNREADABLE_GRACE
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        holder = f"pid {pid} on host {host}, since {since}"
        return holder, host == socket.gethostname() and not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
