"""Jobs over many genes (``run-many``, ``variants``): the data opened once, one outcome per gene, the report,
and each group of genes computed together under one lifecycle.

A gene whose output another process is computing is ``busy`` and left to it; one whose output already holds
this very run is ``skipped``; one that fails is recorded with its error and the others go on. The report
(``run-report.tsv``) accumulates over reruns.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..data.store import H5Store
from ..errors import UserError, first_line
from ..io.writers import atomic_output
from ..model.checkpoint import is_hdf5
from .driver import compute
from .lifecycle import Lifecycle
from .progress import Progress

REPORT = "run-report.tsv"
REPORT_COLUMNS = ["gene", "status", "seconds", "checkpoint", "output", "error"]
#: Genes computed together from one pass over the data (bounds the models and buffers held at once).
GROUP_GENES = 64


class Outcome(Enum):
    """What happened to one gene, and the status the report gives it."""

    DONE = "done"
    SKIPPED = "skipped"  # its output already holds this run
    BUSY = "busy"  # another process computes it
    INPUT_ERROR = "failed"  # its inputs (or its existing output) are wrong: exit code 2
    INTERNAL_ERROR = "internal"  # a bug: exit code 1

    @property
    def status(self) -> str:
        """The report's status column."""
        return "failed" if self in (Outcome.INPUT_ERROR, Outcome.INTERNAL_ERROR) else self.value

    @property
    def failed(self) -> bool:
        """Whether the gene failed."""
        return self.status == "failed"


@dataclass
class GeneOutcome:
    """What happened to one gene."""

    gene: str
    checkpoint: Path
    kind: Outcome
    output: Path
    seconds: float = 0.0
    error: str = ""

    @classmethod
    def failure(cls, gene: str, checkpoint: Path, output: Path, exc: BaseException, seconds: float) -> GeneOutcome:
        """A failed gene: its input error, or an internal error naming the exception."""
        if isinstance(exc, UserError):
            return cls(gene, checkpoint, Outcome.INPUT_ERROR, output, seconds, str(exc))
        return cls(gene, checkpoint, Outcome.INTERNAL_ERROR, output, seconds,
                   f"internal error: {type(exc).__name__}: {first_line(exc)}")


Record = Callable[[GeneOutcome], None]


def open_data(data: Path, checkpoints: list[Path], locking: bool | None) -> H5Store:
    """The data file, opened before anything is made; a directory where a checkpoint is an HDF5 file is the
    two arguments swapped."""
    if Path(data).is_dir() and any(is_hdf5(ck) for ck in checkpoints[:8]):
        raise UserError("is a directory and the MODELS are HDF5 files: the arguments look swapped; give the "
                        "checkpoints (or their directory) first, then the data (.h5mu)", data)
    return H5Store(data, locking=locking)


def make_out_dir(out_dir: Path) -> None:
    """``--out-dir``, made when missing. As for every output, the folder that holds it must exist."""
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not out_dir.exists() and not parent.is_dir():
        raise UserError("output directory does not exist", parent)
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", out_dir) from exc
    if not out_dir.is_dir():
        raise UserError("--out-dir is a file, not a directory", out_dir)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UserError("output directory is not writable", out_dir)


@contextlib.contextmanager
def recorded(report: Path, n_genes: int,
             on_gene: Callable[[int, int, GeneOutcome], None] | None) -> Iterator[tuple[list[GeneOutcome], Record]]:
    """The outcomes of a job and the function that records one (told to ``on_gene``); the report is written
    at the end, interrupted or not, once its folder exists."""
    outcomes: list[GeneOutcome] = []

    def record(outcome: GeneOutcome) -> None:
        outcomes.append(outcome)
        if on_gene is not None:
            on_gene(len(outcomes) - 1, n_genes, outcome)

    try:
        yield outcomes, record
    finally:
        if report.parent.is_dir():
            write_report(report, outcomes)


def run_gene_group(group: list[Path], output_of: Callable[[Path], Path], open_gene: Callable, record: Record,
                   num_workers: int, progress: Progress | None, claim: bool = True,
                   before_finish: Callable | None = None) -> None:
    """Open, compute together (each block of rows read once) and write the genes of ``group``.

    ``open_gene(checkpoint, out)`` returns the gene's job, or None when what it writes already holds this run;
    a job has ``gene`` and what the driver and the lifecycle need. Each gene's output is claimed first, unless
    ``claim`` is False (an output shared by the genes, which its owner claims). ``before_finish(job)`` runs
    before a computed gene's output is written.
    """
    with Lifecycle() as life:
        jobs, outputs = [], {}
        for ck in group:
            t0 = time.monotonic()
            out = output_of(ck)
            holder = life.claim(out) if claim else None
            if holder is not None:
                record(GeneOutcome(ck.stem, ck, Outcome.BUSY, out, 0.0, f"another run is computing it ({holder})"))
                continue
            try:
                job = open_gene(ck, out)
            except Exception as exc:  # noqa: BLE001 - one gene's bug must not lose the other genes
                record(GeneOutcome.failure(ck.stem, ck, out, exc, time.monotonic() - t0))
                continue
            if job is None:
                record(GeneOutcome(ck.stem, ck, Outcome.SKIPPED, out))
                continue
            job.checkpoint, job.seconds = ck, time.monotonic() - t0
            outputs[id(job)] = out
            jobs.append(life.add(job))
        compute(jobs, num_workers, progress, on_failure=life.fail)
        for job in jobs:
            out = outputs[id(job)]
            if job.failed is None:
                try:
                    if before_finish is not None:
                        before_finish(job)
                    life.finish(job)
                except Exception as exc:  # noqa: BLE001
                    life.fail(job, exc)
            record(GeneOutcome.failure(job.gene, job.checkpoint, out, job.failed, job.seconds)
                   if job.failed is not None else GeneOutcome(job.gene, job.checkpoint, Outcome.DONE, out,
                                                             job.seconds))


def write_report(path: Path, outcomes: list[GeneOutcome]) -> None:
    """``gene, status, seconds, checkpoint, output, error`` per gene, written atomically.

    The report accumulates over reruns: genes of an earlier run that this one did not touch keep their
    rows, and so do genes this run skipped (their row says how they were computed); a gene run again gets
    its new row.
    """
    rows = {row[0]: row for row in _earlier_rows(path)}
    for o in outcomes:
        if o.kind is Outcome.SKIPPED and o.gene in rows and rows[o.gene][1] in ("done", "skipped"):
            continue
        rows[o.gene] = [o.gene, o.kind.status, f"{o.seconds:.2f}", str(o.checkpoint), str(o.output),
                        o.error.replace("\t", " ")]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(REPORT_COLUMNS)
        w.writerows(rows.values())


def _earlier_rows(path: Path) -> list[list[str]]:
    """The rows of an existing report (none when absent or not ours)."""
    try:
        with open(path, newline="") as fh:
            table = list(csv.reader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    if not table or table[0] != REPORT_COLUMNS:
        return []
    return [row for row in table[1:] if len(row) == len(REPORT_COLUMNS)]
