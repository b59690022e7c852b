"""The one lifecycle of outputs in progress, for ``run``, ``run-many``, the notebook API and every later job.

A :class:`Lifecycle` is entered around the work on a group of outputs and owns them until it exits:

* **claimed**: one writer per output (:class:`~cell2net_attr.io.lock.OutputLock`), released on every exit;
* **done already**: an existing output counts as done only when its run identity equals the one asked for
  (:func:`existing_output`); another run's output is refused, naming the first field that differs;
* **interrupted** (Ctrl-C, SIGTERM): every live job's finished rows are saved for ``--resume`` and the
  exception carries one hint for the user;
* **failed**: a job that fails (alone, or with the whole group) has its saved chunks removed;
* **finished**: the output is assembled, renamed into place, and its chunks removed.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ..errors import Terminated, UserError
from ..io.formats import read_identity
from ..io.lock import OutputLock

#: What a rerun can do with an output of another run.
OTHER_RUN_HINT = "pass --overwrite to recompute it, or write to another --out-dir"


class OutputJob(Protocol):
    """What the lifecycle needs of a job (a gene's attributions, a mutagenesis job, ...)."""

    output: Any  # where the output goes (None: kept in memory)
    failed: BaseException | None
    resumable: bool  # whether an interrupt leaves something to --resume (or to a rerun) from

    def save(self) -> int:
        """Save what is done (interrupted); how much was saved (cells, peaks)."""

    def discard(self) -> None:
        """Remove what was saved for ``--resume``."""

    def write_output(self) -> None:
        """Assemble the output and rename it into place."""

    def resume_note(self, saved: int) -> str:
        """What was saved, where, and how to continue."""


def existing_output(path: Path, identity, hint: str = OTHER_RUN_HINT) -> bool:
    """Whether ``path`` holds the finished output of the run ``identity`` describes (False: nothing there).

    Raises :class:`UserError` when it holds something else: another run's output (naming the first field
    that differs), or a file that is not a readable output of ours.
    """
    if not path.exists():
        return False
    stored = read_identity(path)
    differ = stored.first_difference(identity)
    if differ is None:
        return True
    label, theirs, ours = differ
    raise UserError(f"holds the output of another run: its {label} is {theirs}, this run's {ours}; {hint}", path)


class Lifecycle:
    """The outputs of a group of jobs while they are made (a context manager; see the module docstring)."""

    def __init__(self) -> None:
        self.live: list[OutputJob] = []
        self._locks: list[OutputLock] = []

    def __enter__(self) -> Lifecycle:
        return self

    def claim(self, out: Path) -> str | None:
        """Take the right to write ``out``: None when taken, else who holds it (another run computes it)."""
        lock = OutputLock(out)
        holder = lock.try_acquire()
        if holder is None:
            self._locks.append(lock)
        return holder

    def claim_or_fail(self, out: Path) -> None:
        """:meth:`claim`, raising :class:`UserError` naming the holder when another run has it."""
        self._locks.append(OutputLock(out).acquire())

    def add(self, job: OutputJob) -> OutputJob:
        """A job whose output this lifecycle now owns."""
        self.live.append(job)
        return job

    def fail(self, job: OutputJob, exc: BaseException) -> None:
        """``job`` failed alone (the others go on): its chunks are removed."""
        job.failed = exc
        self._drop(job)

    def finish(self, job: OutputJob) -> None:
        """Assemble ``job``'s output and rename it into place (its chunks are then removed)."""
        job.write_output()
        self.live.remove(job)

    def _drop(self, job: OutputJob) -> None:
        job.discard()
        if job in self.live:
            self.live.remove(job)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if isinstance(exc, (KeyboardInterrupt, Terminated)):
                hint = self._save()
                if hint:
                    exc.resume_hint = hint  # type: ignore[attr-defined]
            elif exc is not None:
                for job in list(self.live):
                    self._drop(job)
        finally:
            for lock in self._locks:
                lock.release()
            self._locks.clear()

    def _save(self) -> str | None:
        """Save every live job's finished rows; the hint for the user (None when nothing is resumable)."""
        saved = [(job, job.save()) for job in self.live if job.resumable]
        if not saved:
            return None
        if len(saved) == 1:
            job, done = saved[0]
            return job.resume_note(done)
        with_rows = sum(rows > 0 for _, rows in saved)
        return (f"finished chunks of {with_rows} of {len(saved)} genes saved; rerun the same command with --resume "
                f"to continue")
