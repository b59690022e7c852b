"""``run-many``: one attribution file per gene checkpoint, the data file opened, hashed and read once.

Genes whose output already exists are skipped (outputs appear only when complete, so an existing
file is a finished one). A gene that fails is recorded in ``run-report.tsv`` and the run goes on.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .._lists import is_list_file, read_list_file
from ..data.gene_view import cell_names
from ..data.selection import read_tokens
from ..data.store import H5Store
from ..errors import Terminated, UserError
from ..io.lock import OutputLock
from ..io.writers import atomic_output, check_output
from ..model.checkpoint import file_sha256
from .binding import load_model
from .gene_job import JobSpec, Selection, compute, open_job, save_for_resume
from .progress import Progress
from .run import RunOptions
from .shards import Shard
from .stream import Blocks

REPORT = "run-report.tsv"
#: Genes computed together from one pass over the data (bounds the models and buffers held at once).
GROUP_GENES = 64
FORMATS = ("h5", "h5ad", "npy")


@dataclass
class GeneOutcome:
    """What happened to one gene."""

    gene: str
    checkpoint: Path
    status: str  # done, skipped, busy (another process computes it), failed
    output: Path
    seconds: float = 0.0
    error: str = ""


def collect_checkpoints(items: list[str]) -> list[Path]:
    """Checkpoints from directories (their ``*.pt``), files, and ``@FILE`` lists, in order."""
    found: list[Path] = []
    for item in items:
        if is_list_file(item):
            found += [Path(line) for line in read_list_file(item, "checkpoint list")]
        elif Path(item).is_dir():
            found += sorted(Path(item).glob("*.pt"))
        else:
            found.append(Path(item))
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise UserError(f"checkpoint(s) not found: {', '.join(missing[:5])}", missing[0])
    if not found:
        raise UserError("no checkpoints (*.pt) found", " ".join(items))
    found = _unique_files(found)
    stems = [p.stem for p in found]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise UserError(f"several checkpoints for gene(s) {dup[:5]}: outputs are named by gene", "MODELS")
    return found


def _unique_files(paths: list[Path]) -> list[Path]:
    """Each file once (a directory and a file in it name the same checkpoint), in first-seen order."""
    seen: dict[Path, Path] = {}
    for p in paths:
        seen.setdefault(p.resolve(), p)
    return list(seen.values())


def run_many(
    checkpoints: list[Path],
    data: Path,
    out_dir: Path,
    fmt: str,
    opts: RunOptions,
    on_gene: Callable[[int, int, GeneOutcome], None] | None = None,
    shard: Shard | None = None,
    progress: Progress | None = None,
) -> list[GeneOutcome]:
    """Attribute every checkpoint against ``data`` into ``out_dir/<gene>.<fmt>``.

    The data file is opened, hashed and its cells selected once; genes are computed in groups of
    :data:`GROUP_GENES`, each block of rows read once for the whole group. With a ``shard``, only that
    contiguous part of the genes is run and the report is ``run-report-0000K-of-0000N.tsv``. Returns one
    outcome per gene; the report is written even when interrupted.
    """
    report = out_dir / REPORT
    if shard is not None and shard.count > 1:
        start, stop = shard.bounds(len(checkpoints))
        checkpoints, report = checkpoints[start:stop], shard.path(report)
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}', choose from {', '.join(FORMATS)}", param="fmt")
    params, info, batch_size = opts.check()  # flag errors before any file is touched
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", out_dir) from exc
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    store = H5Store(data, locking=opts.hdf5_locking)
    outcomes: list[GeneOutcome] = []

    def record(outcome: GeneOutcome) -> None:
        outcomes.append(outcome)
        if on_gene is not None:
            on_gene(len(outcomes) - 1, len(checkpoints), outcome)

    try:
        todo = []
        for ck in checkpoints:
            out = out_dir / f"{ck.stem}.{fmt}"
            if out.exists() and not opts.overwrite:
                record(GeneOutcome(ck.stem, ck, "skipped", out))
            else:
                todo.append((ck, out))
        if todo:
            names = cell_names(store)
            selection = Selection.resolve(store, names, tokens, opts.idx_type, opts.where)
            spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size, len(todo)), selection,
                           0, len(selection.rows), data_sha256=file_sha256(data), resume=opts.resume,
                           hdf5_locking=opts.hdf5_locking, chunk_rows=opts.chunk_rows)
            for a in range(0, len(todo), GROUP_GENES):
                group = todo[a : a + GROUP_GENES]
                _run_group(group, data, store, replace(spec, group_size=len(group)), opts, record, progress)
    finally:
        store.close()
        write_report(report, outcomes)
    return outcomes


def _run_group(group: list[tuple[Path, Path]], data: Path, store: H5Store, spec: JobSpec, opts: RunOptions,
               record: Callable[[GeneOutcome], None], progress: Progress | None) -> None:
    """Load and check each gene of the group, compute them together, then write each output.

    Each gene's output is locked first: a gene another process is computing is reported ``busy`` and left
    to it, so overlapping runs share the work.
    """
    jobs, locks = [], []
    try:
        for ck, out in group:
            t0 = time.monotonic()
            lock = OutputLock(out)
            holder = lock.try_acquire()
            if holder is not None:
                record(GeneOutcome(ck.stem, ck, "busy", out, 0.0, f"another run is computing it ({holder})"))
                continue
            locks.append(lock)
            if out.exists() and not opts.overwrite:  # finished by another run meanwhile
                record(GeneOutcome(ck.stem, ck, "skipped", out))
                continue
            try:
                check_output(out, opts.overwrite, [ck, data], opts.delta)
                model = load_model(ck, store, None, opts.covariates, opts.device, opts.rna_mod, opts.atac_mod)
                job = open_job(model, out, spec, ck, data)
                job.seconds = time.monotonic() - t0
                jobs.append(job)
            except Exception as exc:  # noqa: BLE001 - one gene's bug must not lose the other genes
                record(_failed(ck, out, exc, time.monotonic() - t0))
        _compute_group(jobs, opts, record, progress)
    finally:
        for lock in locks:
            lock.release()


def _compute_group(jobs: list, opts: RunOptions, record: Callable[[GeneOutcome], None],
                   progress: Progress | None) -> None:
    """Compute the group's genes together, then write each output (or record its failure)."""
    compute(jobs, opts.num_workers, progress, isolate=True)
    for i, job in enumerate(jobs):
        ck = Path(job.attrs["checkpoint"])
        if job.failed is None:
            try:
                job.finish()
            except (KeyboardInterrupt, Terminated) as exc:
                save_for_resume(exc, jobs[i:])
                raise
            except Exception as exc:  # noqa: BLE001
                job.failed = exc
                job.partial.discard()
        if job.failed is not None:
            record(_failed(ck, job.out, job.failed, job.seconds))
        else:
            record(GeneOutcome(job.gene, ck, "done", job.out, job.seconds))


def _failed(ck: Path, out: Path, exc: BaseException, seconds: float) -> GeneOutcome:
    if isinstance(exc, UserError):
        return GeneOutcome(ck.stem, ck, "failed", out, seconds, str(exc))
    first = (str(exc).strip().splitlines() or [""])[0]
    return GeneOutcome(ck.stem, ck, "failed", out, seconds, f"internal error: {type(exc).__name__}: {first}")


REPORT_COLUMNS = ["gene", "status", "seconds", "checkpoint", "output", "error"]


def write_report(path: Path, outcomes: list[GeneOutcome]) -> None:
    """``gene, status, seconds, checkpoint, output, error`` per gene, written atomically.

    The report accumulates over reruns: genes of an earlier run that this one did not touch keep their
    rows; a gene run again gets its new row.
    """
    rows = {row[0]: row for row in _earlier_rows(path)}
    for o in outcomes:
        rows[o.gene] = [o.gene, o.status, f"{o.seconds:.2f}", str(o.checkpoint), str(o.output),
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
