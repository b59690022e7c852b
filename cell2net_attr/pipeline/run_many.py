"""``run-many``: one attribution file per gene checkpoint, the data file opened, hashed and read once.

A gene whose output already holds this very run (the same run identity) is skipped; an output of another
run is refused for that gene, naming what differs (outputs appear only when complete, so an existing file
is a finished one). A gene that fails is recorded in ``run-report.tsv`` and the run goes on.

With ``--summary``, the group table ``summarize`` would give is accumulated as the genes compute
(:mod:`cell2net_attr.pipeline.summary_job`), with or without the per-cell files (``--no-per-cell``).
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from ..data.covariates import parse_covariates
from ..data.job_index import DataIndex
from ..data.selection import read_tokens
from ..data.store import H5Store
from ..errors import UserError, first_line
from ..io.formats import OutputFormat, check_output, format_named
from ..io.writers import atomic_output
from ..model.checkpoint import is_hdf5, load_checkpoint
from ..model.device import resolve_device
from .binding import bind
from .driver import compute
from .gene_job import GeneJob, JobSpec, Selection, open_job
from .lifecycle import Lifecycle, existing_output
from .options import RunOptions
from .progress import Progress
from .shards import Shard
from .stream import Blocks
from .summary_job import SummaryJob, check_summary_path
from .threads import set_threads

REPORT = "run-report.tsv"
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


@dataclass
class _Job:
    """What every gene of a ``run-many`` job shares."""

    spec: JobSpec
    index: DataIndex
    data: Path
    out_dir: Path
    fmt: OutputFormat
    opts: RunOptions
    covariates: list[str]
    device: object
    record: Callable[[GeneOutcome], None]
    progress: Progress | None
    summary: SummaryJob | None = None

    def output_of(self, gene_job: GeneJob) -> Path:
        """What the report names as a gene's output: its file, else the summary."""
        return gene_job.output.path if gene_job.output is not None else self.summary.path


def run_many(
    checkpoints: list[Path],
    data: Path,
    out_dir: Path,
    fmt: str,
    opts: RunOptions,
    on_gene: Callable[[int, int, GeneOutcome], None] | None = None,
    shard: Shard | None = None,
    progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[GeneOutcome]:
    """Attribute every checkpoint against ``data`` into ``out_dir/<gene>.<fmt>``.

    The data file is opened, hashed and its cells selected once; genes are computed in groups of
    :data:`GROUP_GENES`, each block of rows read once for the whole group. With a ``shard``, only that
    contiguous part of the genes is run and the report is ``run-report-0000K-of-0000N.tsv``. Returns one
    outcome per gene; the report is written even when interrupted. With ``opts.summary``, the group table is
    written at the end (``summary-0000K-of-0000N.tsv`` for a shard), its notes handed to ``on_note``.
    """
    report = out_dir / REPORT
    sharded = shard is not None and shard.count > 1
    if sharded:
        start, stop = shard.bounds(len(checkpoints))
        checkpoints, report = checkpoints[start:stop], shard.path(report)
    output_format = format_named(fmt)
    params, info, batch_size = opts.check()  # flag errors before any file is touched
    set_threads(opts.threads)
    if opts.delta and not output_format.has_names:
        raise UserError("--delta is stored only in HDF5 or AnnData output (.h5/.hdf5/.h5ad)", param="fmt")
    if opts.per_cell:
        opts.storage().check(output_format.name)
    if opts.summary is not None:
        check_summary_path(Path(opts.summary), folder=False)  # the rest once --out-dir is made
    covariates = parse_covariates(opts.covariates)
    device = resolve_device(opts.device)  # once: a missing GPU is one error, not one per gene
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    store = _open_data(data, checkpoints, opts.hdf5_locking)
    try:
        _make_out_dir(out_dir)
    except BaseException:
        store.close()
        raise
    outcomes: list[GeneOutcome] = []

    def record(outcome: GeneOutcome) -> None:
        outcomes.append(outcome)
        if on_gene is not None:
            on_gene(len(outcomes) - 1, len(checkpoints), outcome)

    try:
        index = DataIndex(store)
        selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
        spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size, len(checkpoints)), selection,
                       0, len(selection.rows), data_sha256=index.sha256, resume=opts.resume,
                       hdf5_locking=opts.hdf5_locking, chunk_rows=opts.chunk_rows, storage=opts.storage())
        summary = (SummaryJob(Path(opts.summary), opts.groupby, opts.top, spec, covariates, index, shard,
                              opts.overwrite) if opts.summary is not None else None)
        with summary or contextlib.nullcontext():
            job = _Job(spec, index, data, out_dir, output_format, opts, covariates, device, record, progress,
                       summary)
            for a in range(0, len(checkpoints), GROUP_GENES):
                group = checkpoints[a : a + GROUP_GENES]
                _run_group(group, replace(job, spec=replace(spec, group_size=len(group))))
            if summary is not None:
                _write_summary(summary, [ck.stem for ck in checkpoints], on_note)
    finally:
        store.close()
        write_report(report, outcomes)
    return outcomes


def _write_summary(summary: SummaryJob, genes: list[str], on_note: Callable[[str], None] | None) -> None:
    """Write the job's table and hand its notes (cells left out, empty groups) to ``on_note``."""
    written = summary.write(genes)
    notes = written.notes() if written is not None else [f"no gene has rows: {summary.path} is not written"]
    for note in notes if on_note is not None else ():
        on_note(note)


def _open_data(data: Path, checkpoints: list[Path], locking: bool | None) -> H5Store:
    """The data file, opened before anything is made; a directory where a checkpoint is an HDF5 file is the
    two arguments swapped."""
    if Path(data).is_dir() and any(is_hdf5(ck) for ck in checkpoints[:8]):
        raise UserError("is a directory and the MODELS are HDF5 files: the arguments look swapped; give the "
                        "checkpoints (or their directory) first, then the data (.h5mu)", data)
    return H5Store(data, locking=locking)


def _make_out_dir(out_dir: Path) -> None:
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


def _run_group(group: list[Path], job: _Job) -> None:
    """Load and check each gene of the group, compute them together, then write each output.

    Each gene's output is claimed first: a gene another process is computing is reported ``busy`` and left
    to it, so overlapping runs share the work.
    """
    with Lifecycle() as life:
        jobs = [j for j in (_open_gene(ck, job, life) for ck in group) if j is not None]
        compute(jobs, job.opts.num_workers, job.progress, on_failure=life.fail)
        for gene_job in jobs:
            if gene_job.failed is None:
                try:
                    if job.summary is not None:  # its sums kept first: then its chunks may go
                        job.summary.finish(gene_job.gene, gene_job.model.checkpoint.sha256,
                                           gene_job.model.features(job.spec.params.target), gene_job.moments.total())
                    life.finish(gene_job)
                except Exception as exc:  # noqa: BLE001 - one gene's bug must not lose the other genes
                    life.fail(gene_job, exc)
            if gene_job.failed is not None:
                job.record(GeneOutcome.failure(gene_job.gene, gene_job.checkpoint, job.output_of(gene_job),
                                               gene_job.failed, gene_job.seconds))
            else:
                job.record(GeneOutcome(gene_job.gene, gene_job.checkpoint, Outcome.DONE, job.output_of(gene_job),
                                       gene_job.seconds))


def _open_gene(ck: Path, job: _Job, life: Lifecycle) -> GeneJob | None:
    """The gene's job, or None (recorded) when it is busy, done already, or fails to load."""
    t0 = time.monotonic()
    per_cell, summary, redo = job.opts.per_cell, job.summary, job.opts.overwrite
    out = job.out_dir / f"{ck.stem}{job.fmt.suffix}" if per_cell else summary.path
    holder = life.claim(out) if per_cell else None  # a summary is claimed whole, for the job
    if holder is not None:
        job.record(GeneOutcome(ck.stem, ck, Outcome.BUSY, out, 0.0, f"another run is computing it ({holder})"))
        return None
    try:
        checkpoint = load_checkpoint(ck)
        identity = job.spec.identity(checkpoint.gene, job.covariates, checkpoint.sha256, job.fmt.name)
        has_file = per_cell and not redo and existing_output(out, identity)
        has_rows = summary is not None and not redo and summary.has(checkpoint.gene, checkpoint.sha256)
        if (has_file or not per_cell) and (has_rows or summary is None):
            job.record(GeneOutcome(ck.stem, ck, Outcome.SKIPPED, out))
            return None
        model = bind(checkpoint, job.index, job.covariates, job.device, job.opts.rna_mod, job.opts.atac_mod)
        features = model.features(job.spec.params.target)
        if has_file:  # the summary alone is missing it: its sums are read back from its output
            summary.from_output(checkpoint.gene, checkpoint.sha256, features, out)
            job.record(GeneOutcome(ck.stem, ck, Outcome.SKIPPED, out, time.monotonic() - t0))
            return None
        if per_cell:
            check_output(out, True, [ck, job.data])
        moments = summary.moments(len(features)) if summary is not None else None
        state = None if per_cell else summary.state_path(checkpoint.gene)
        gene_job = life.add(open_job(model, job.spec, (out, job.fmt) if per_cell else None, ck, job.data,
                                     moments, state))
    except Exception as exc:  # noqa: BLE001 - one gene's bug must not lose the other genes
        job.record(GeneOutcome.failure(ck.stem, ck, out, exc, time.monotonic() - t0))
        return None
    gene_job.seconds = time.monotonic() - t0
    return gene_job


REPORT_COLUMNS = ["gene", "status", "seconds", "checkpoint", "output", "error"]


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
