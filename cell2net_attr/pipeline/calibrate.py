"""``plan``'s measurements: a few cells of a few genes through the real driver, on this machine, these threads.

Each calibration gene (the smallest and the largest of the job, by :func:`~.plan.gene_size`) is loaded and
bound as ``run-many`` does, then computed twice, on the first ``n/2`` and the first ``n`` selected cells, into
its real output (in a scratch folder): the difference between the two gives what one more cell costs, apart
from what a gene costs whatever its cells (the checkpoint, data, engine, training check and output file).
For TFs ``n`` is two of the engine's blocks of cells (:func:`calibration_cells`): the two runs then differ by
one whole block in the shapes the job computes, and what the first block of a gene's shapes costs once (the
math libraries prepare their kernels per shape) is the gene's, as in the job. Reading, writing and the bytes
written are measured the same way. Memory is the process's resident size once warm (after a first gene),
with the genes, and at its peak, each read after freed memory is handed back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..data.job_index import DataIndex
from ..data.rows import SharedRows
from ..downstream import tables_io
from ..downstream.summary import Summary, gene_table
from ..io.formats import OutputFormat
from ..model.checkpoint import load_checkpoint
from .binding import bind
from .driver import compute
from .gene_job import GeneJob, JobSpec, Selection, open_job
from .lifecycle import Lifecycle
from .plan import Calibration, GeneShape
from .progress import NullProgress
from .stream import release_free_memory
from .summary_job import GeneMoments
from .training_check import check_training

#: Times each calibration gene is computed on each of its two sizes (the fastest counts: a shared machine's
#: noise only ever adds time).
REPEATS = 2
#: Bytes hashed to measure how fast the data file is hashed (every task hashes it whole).
HASH_SAMPLE = 64 << 20


@dataclass
class Context:
    """What the job would run with (as ``run-many`` builds it), and where its scratch files go."""

    checkpoints: list[Path]
    shapes: list[GeneShape]
    index: DataIndex
    selection: Selection
    spec: JobSpec  # the job's spec (every selected row)
    fmt: OutputFormat | None  # None: no per-cell files
    covariates: list[str]
    device: object
    rna_mod: str
    atac_mod: str
    num_workers: int
    codes: np.ndarray  # the summary's group of each selected row (zeros without --groupby)
    order: list  # the summary's groups ([None] without --groupby)
    summary_suffix: str | None  # the summary's format (".tsv", ".h5ad"...), None without one
    groupby: str | None
    top: int | None
    scratch: Path | None = None


@dataclass
class Timer:
    wall: float = 0.0
    cpu: float = 0.0


@contextlib.contextmanager
def _timed(into: Timer):
    w, c = time.perf_counter(), time.process_time()
    try:
        yield into
    finally:
        into.wall += time.perf_counter() - w
        into.cpu += time.process_time() - c


def rss_bytes() -> int:
    """The process's resident bytes now, once freed heap memory is handed back (Linux), else its peak so far."""
    release_free_memory()
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident bytes so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def seconds_since_start() -> float:
    """Wall seconds since this process started (Linux), else 0: the start-up a task pays before its work."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def hash_seconds(path: Path) -> float:
    """Seconds to hash ``path`` whole, from the time to hash its first :data:`HASH_SAMPLE` bytes."""
    size = path.stat().st_size
    h, t0, done = hashlib.sha256(), time.perf_counter(), 0
    with open(path, "rb") as fh:
        while done < min(size, HASH_SAMPLE) and (block := fh.read(1 << 20)):
            h.update(block)
            done += len(block)
    return (time.perf_counter() - t0) * size / max(done, 1)


def _slope(n1: int, y1: float, n2: int, y2: float) -> tuple[float, float]:
    """Per-unit cost and fixed part of two measures, neither below zero."""
    per = max((y2 - y1) / max(n2 - n1, 1), 0.0)
    return per, max(y1 - n1 * per, 0.0)


def pick_genes(shapes: list[GeneShape], n: int) -> list[int]:
    """Positions of up to ``n`` calibration genes: the smallest, the largest, then spread between."""
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i].size, i))
    picks = [order[round(k * (len(order) - 1) / max(n - 1, 1))] for k in range(min(n, len(order)))]
    return list(dict.fromkeys(picks))


def calibration_cells(spec: JobSpec) -> int:
    """Cells computed per calibration gene by default: two of the engine's blocks for TFs; 64 for peaks, whose
    engine computes a cell at a time (its cost is linear from the first cells) and costs milliseconds each."""
    return 64 if spec.params.target == "peaks" else 2 * spec.blocks.compute


def calibrate(ctx: Context, start: Timer, cells: int | None = None, genes: int = 2,
              log: Callable[[str], None] | None = None) -> Calibration:
    """The :class:`Calibration` of the job ``ctx`` describes (``start``: what its start-up costs; ``cells``:
    per calibration gene, :func:`calibration_cells` when None)."""
    rows = ctx.selection.rows
    n2 = max(2, min(cells or calibration_cells(ctx.spec), len(rows)))
    n1 = max(1, n2 // 2)
    picks = pick_genes(ctx.shapes, genes)
    if log:
        log(f"calibrating on {n2} cells of {', '.join(ctx.shapes[i].gene for i in picks)}")
    scratch = Path(tempfile.mkdtemp(prefix=".plan-", dir=ctx.scratch))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _warm_up(ctx, picks[0], scratch)
            base = rss_bytes()  # warm: torch's and the allocators' one-time memory is the process's, not a gene's
            probes = [_probe(ctx, i, n1, n2, scratch) for i in picks]
            grouped = _read_time(ctx, [p.model for p in probes], rows, n1, n2)
            summary = _summary_bytes(ctx, probes, scratch) if ctx.summary_suffix else (0.0, 0.0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    held = rss_bytes()  # the probe genes still held (their models and engines)
    per_gene = max(0, held - base) // len(probes)
    work = max(0, peak_rss_bytes() - held)
    single = float(np.mean([p.read_per_cell for p in probes]))
    per_gene_read = max(0.0, (grouped - single) / max(len(probes) - 1, 1)) if len(probes) > 1 else 0.0
    return Calibration(
        sizes=tuple(ctx.shapes[i].size for i in picks), cell_seconds=tuple(p.cell.wall for p in probes),
        cell_cpu=tuple(p.cell.cpu for p in probes), gene_seconds=float(np.mean([p.fixed.wall for p in probes])),
        gene_cpu=float(np.mean([p.fixed.cpu for p in probes])), read_seconds=max(0.0, single - per_gene_read),
        read_gene_seconds=per_gene_read, value_seconds=float(np.mean([p.value_seconds for p in probes])),
        start_seconds=start.wall, start_cpu=start.cpu,
        bytes_per_value=float(np.mean([p.bytes_per_value for p in probes])),
        bytes_per_row=float(np.mean([p.bytes_per_row for p in probes])),
        bytes_per_file=float(np.mean([p.bytes_per_file for p in probes])),
        summary_bytes_per_row=summary[0], summary_bytes=summary[1], memory_base=base, memory_per_gene=per_gene,
        memory_work=work * max(1, ctx.spec.blocks.compute // n2), read_rows=ctx.spec.blocks.read)


@dataclass
class _Probe:
    model: object
    shape: GeneShape
    fixed: Timer  # per gene, whatever its cells
    cell: Timer  # per cell
    read_per_cell: float
    value_seconds: float
    bytes_per_value: float
    bytes_per_row: float
    bytes_per_file: float
    moments: object = None


def _warm_up(ctx: Context, i: int, scratch: Path) -> None:
    """What a process pays once, whatever its genes (torch's first calls, the allocators, the shared tables):
    a gene computed on a few cells, untimed."""
    model = bind(load_checkpoint(ctx.checkpoints[i]), ctx.index, ctx.covariates, ctx.device, ctx.rna_mod,
                 ctx.atac_mod)
    job = _job(ctx, model, ctx.checkpoints[i], 16, scratch, "warm")
    with Lifecycle() as life:
        life.add(job)
        compute([job], ctx.num_workers, NullProgress())
        life.finish(job)


def _probe(ctx: Context, i: int, n1: int, n2: int, scratch: Path) -> _Probe:
    """One calibration gene: bound, computed on ``n1`` then ``n2`` cells into its output, each part timed."""
    shape, ck = ctx.shapes[i], ctx.checkpoints[i]
    fixed = Timer()
    with _timed(fixed):  # as run-many opens a gene: checkpoint, data, engine, training check
        checkpoint = load_checkpoint(ck)
        model = bind(checkpoint, ctx.index, ctx.covariates, ctx.device, ctx.rna_mod, ctx.atac_mod)
        first = _job(ctx, model, ck, n1, scratch, f"{n1}")
        check_training([model], [first.engine])
    measured = {}
    for k, n in enumerate((n1, n2) * REPEATS):  # interleaved: both sizes meet the same load; the fastest kept
        job = first if k == 0 else _job(ctx, model, ck, n, scratch, f"{n}-{k}")
        run, write = Timer(), Timer()
        with Lifecycle() as life:
            life.add(job)
            with _timed(run):
                compute([job], ctx.num_workers, NullProgress(), check=False)
            with _timed(write):
                life.finish(job)
        path = job.output.path if job.output is not None else None
        if n in measured:
            run, write = (_fastest(a, b) for a, b in zip(measured[n][:2], (run, write)))
        measured[n] = (run, write, _file_bytes(path), _values_bytes(path, ctx.fmt), job.moments)
    reads = {n: _read(SharedRows([model.data]), ctx.selection.rows[:n]) for n in (n1, n2)}
    read_per_cell, _ = _slope(n1, reads[n1], n2, reads[n2])
    (r1, w1, s1, _, _), (r2, w2, s2, v2, moments) = measured[n1], measured[n2]
    cell = Timer(*(max(0.0, c - read_per_cell) for c in (_slope(n1, r1.wall, n2, r2.wall)[0],
                                                         _slope(n1, r1.cpu, n2, r2.cpu)[0])))
    for t1, t2, into in ((r1, r2, "wall"), (r1, r2, "cpu")):  # what the cells do not explain is the gene's
        setattr(fixed, into, getattr(fixed, into) + _slope(n1, getattr(t1, into), n2, getattr(t2, into))[1])
    write_per_row, write_fixed = _slope(n1, w1.wall, n2, w2.wall)
    fixed.wall += write_fixed
    fixed.cpu += _slope(n1, w1.cpu, n2, w2.cpu)[1]
    per_row, per_file = _slope(n1, s1, n2, s2)
    per_value = v2 / (n2 * shape.n_features) if v2 else 0.0
    return _Probe(model, shape, fixed, cell, read_per_cell, write_per_row / max(shape.n_features, 1), per_value,
                  max(0.0, per_row - per_value * shape.n_features), per_file, moments)


def _fastest(a: Timer, b: Timer) -> Timer:
    """The smaller of two measures, wall and CPU each."""
    return Timer(min(a.wall, b.wall), min(a.cpu, b.cpu))


def _job(ctx: Context, model, ck: Path, n: int, scratch: Path, tag: str) -> GeneJob:
    """The gene's job on the first ``n`` selected cells, into a scratch output (or summary state)."""
    rows = ctx.selection.rows[:n]
    spec = JobSpec(ctx.spec.params, ctx.spec.engine, ctx.spec.blocks, Selection(rows, ""), 0, n,
                   storage=ctx.spec.storage, group_size=1)
    moments = (GeneMoments(ctx.codes[:n], len(ctx.order), len(model.features(spec.params.target)), "plan")
               if ctx.summary_suffix else None)
    if ctx.fmt is not None:
        return open_job(model, spec, (scratch / f"{model.gene}-{tag}{ctx.fmt.suffix}", ctx.fmt), ck, None, moments)
    return open_job(model, spec, None, ck, None, moments, scratch / f"{model.gene}-{tag}")


def _read(reader: SharedRows, rows: np.ndarray) -> float:
    """Seconds to read ``rows`` (the faster of two reads: the first may meet a cold cache)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        reader.read(rows)
        best = min(best, time.perf_counter() - t0)
    return best


def _read_time(ctx: Context, models: list, rows: np.ndarray, n1: int, n2: int) -> float:
    """Seconds per cell to read the inputs of every calibration gene at once (one group)."""
    reader = SharedRows([m.data for m in models])
    return _slope(n1, _read(reader, rows[:n1]), n2, _read(reader, rows[:n2]))[0]


def _file_bytes(path: Path | None) -> int:
    """An output's bytes, with its identity sidecar (a ``.npy``'s)."""
    if path is None:
        return 0
    sidecar = path.with_name(f".{path.name}.run.json")
    return path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)


def _values_bytes(path: Path | None, fmt: OutputFormat | None) -> int:
    """Bytes the attributions take in the file, as stored (compressed)."""
    if path is None:
        return 0
    if not fmt.has_names:
        return int(np.load(path, mmap_mode="r").nbytes)
    with h5py.File(path, "r") as f:
        return int(f["attributions" if "attributions" in f else "X"].id.get_storage_size())


def _summary_bytes(ctx: Context, probes: list[_Probe], scratch: Path) -> tuple[float, float]:
    """Bytes per row of the summary table, and its fixed part, from tables of one and of every probe gene."""
    target, order = ctx.spec.params.target, ctx.order
    tables = [gene_table(p.moments.total().stats(p.model.gene, p.model.features(target), order, target),
                         ctx.groupby, ctx.top, order if ctx.groupby else None) for p in probes]
    sizes = []
    for k in (1, len(tables)):
        table = pd.concat(tables[:k], ignore_index=True)
        path = scratch / f"summary-{k}{ctx.summary_suffix}"
        tables_io.write_summary(Summary(table, ctx.groupby, [p.model.gene for p in probes[:k]],
                                        target=ctx.spec.params.target, n_top=ctx.top), path)
        sizes.append((len(table), path.stat().st_size))
    (r1, s1), (r2, s2) = sizes
    if r2 == r1:
        return s1 / max(r1, 1), 0.0
    return _slope(r1, s1, r2, s2)
