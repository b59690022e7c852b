"""``plan``: what a ``run-many`` job will cost, predicted before it is submitted.

The prediction is arithmetic on two kinds of input. The job's sizes: the genes (their checkpoints' shapes),
the cells it selects, the groups of its summary. And a :class:`Calibration`: what a few cells of a few genes
cost through the real driver on this machine, with these threads (:mod:`cell2net_attr.pipeline.calibrate`
measures it). A gene's cost is a fixed part (its checkpoint, data, engine, training check and output file)
plus one per cell, which grows with the width of the head's first layer (:func:`gene_size`) and is
interpolated between the calibration genes; reading is paid once per block of cells for each group of
:data:`~cell2net_attr.pipeline.run_many.GROUP_GENES` genes; every task starts a process, hashes the data and
selects its cells.

A SLURM array splits the genes into contiguous shards (``--shard K/N``): the number of tasks that fit a
``--time-limit`` is the smallest whose longest task, with :data:`MARGIN` for the estimate's error, fits it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import UserError
from ..model.architecture import ModelSpec
from .shards import Shard

#: A task is planned to take at most this share of ``--time-limit``: the rest is for the estimate's error.
MARGIN = 0.8


@dataclass(frozen=True)
class GeneShape:
    """What a gene's checkpoint says about its cost: outputs per cell, inputs read per cell, and its size."""

    gene: str
    n_features: int  # attributions per cell (TFs, or peaks)
    n_inputs: int  # columns read per cell (peaks, TFs, covariates)
    size: int  # the cost proxy of one cell (gene_size)


def gene_size(spec: ModelSpec) -> int:
    """The width of the head's first Linear: encoded peaks, distances, TFs and covariates (a cell's compute
    grows with it)."""
    return spec.n_peaks * spec.n_dims + spec.n_peaks + spec.n_tfs + spec.n_covariates


def gene_shape(gene: str, spec: ModelSpec, target: str) -> GeneShape:
    """A gene's :class:`GeneShape` from its checkpoint's spec."""
    features = spec.n_peaks if target == "peaks" else spec.n_tfs
    return GeneShape(gene, features, spec.n_peaks + spec.n_tfs + spec.n_covariates, gene_size(spec))


@dataclass(frozen=True)
class Calibration:
    """Costs measured on a few cells through the real driver (wall seconds; CPU seconds beside them)."""

    sizes: tuple[int, ...]  # gene_size of each calibration gene
    cell_seconds: tuple[float, ...]  # per cell of each calibration gene: compute (its reading apart)
    cell_cpu: tuple[float, ...]
    gene_seconds: float  # per gene: checkpoint, data, engine, training check, output file's fixed part
    gene_cpu: float
    read_seconds: float  # per cell and group of genes, and per cell and gene in the group:
    read_gene_seconds: float  # a block of rows read once for the group, cut into each gene's inputs
    value_seconds: float  # per stored value: the output written (0 without per-cell files)
    start_seconds: float  # per task: process start, data opened and hashed, cells selected
    start_cpu: float
    bytes_per_value: float  # stored bytes per value (type and compression)
    bytes_per_row: float  # per cell and file besides the values (names, obs)
    bytes_per_file: float
    summary_bytes_per_row: float = 0.0  # per row of the summary table, and its fixed part
    summary_bytes: float = 0.0
    memory_base: int = 0  # resident bytes of a job before its genes
    memory_per_gene: int = 0  # per gene held in a group (module, data, engine)
    memory_work: int = 0  # what computing a block takes on top
    read_rows: int = 2048  # rows read at once for a group
    buffer_bytes: int = 256 << 20  # unsaved rows of a group, at most

    def cell_cost(self, size: int, cpu: bool = False) -> float:
        """Seconds per cell of a gene of ``size``: linear through the calibration genes (proportional to the
        size with one), never below a quarter of the cheapest measured."""
        costs = np.asarray(self.cell_cpu if cpu else self.cell_seconds, dtype=np.float64)
        sizes = np.asarray(self.sizes, dtype=np.float64)
        if len(set(self.sizes)) > 1:
            slope, intercept = np.polyfit(sizes, costs, 1)
            value = intercept + slope * size if slope >= 0 else costs.mean()
        else:
            value = costs.mean() * size / max(sizes.mean(), 1.0)
        return float(max(value, costs.min() / 4))


@dataclass
class Plan:
    """The prediction for a whole job (``--json`` prints it)."""

    cells: int
    genes: int
    cell_genes: int
    seconds: float  # wall time of the whole job: one process, or its longest task when tasks run at once
    cpu_seconds: float  # over every task
    peak_memory_bytes: int  # of one process (one task)
    output_bytes: int  # per-cell files and summary
    tasks: int
    task_seconds: float  # the longest task's wall time
    serial_seconds: float  # wall time as one process
    per_cell_bytes: int = 0
    summary_bytes: int = 0
    time_limit: float | None = None
    fits: bool = True  # every task fits the time limit (with the margin)
    notes: list[str] = field(default_factory=list)
    threads: int = 0  # what it was calibrated with
    device: str = ""
    calibration: dict = field(default_factory=dict)  # the measured costs (Calibration's fields)

    def as_dict(self) -> dict:
        """Plain values, for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class JobShape:
    """The rest of what a job's cost depends on: cells, output kind, summary, grouping, workers."""

    cells: int
    per_cell: bool = True
    summary_rows_per_gene: int = 0  # groups with cells x features kept (--top), 0 without --summary
    group_genes: int = 64
    num_workers: int = 1
    itemsize: int = 4
    stored_rows: int | None = None  # rows a file's values take on disk (whole chunks, uncompressed); None: cells


def gene_seconds(genes: list[GeneShape], job: JobShape, cal: Calibration, cpu: bool = False) -> np.ndarray:
    """Each gene's own seconds: its fixed part, its cells and its output written."""
    fixed = cal.gene_cpu if cpu else cal.gene_seconds
    write = cal.value_seconds if job.per_cell else 0.0
    return np.array([fixed + job.cells * (cal.cell_cost(g.size, cpu) + write * g.n_features) for g in genes])


def task_seconds(genes: list[GeneShape], job: JobShape, cal: Calibration, own: np.ndarray, cpu: bool = False) -> float:
    """One task (process) over ``genes``: start, each gene's own seconds, reading per group."""
    read = 0.0
    for a in range(0, len(genes), job.group_genes):
        k = len(genes[a : a + job.group_genes])
        read += job.cells * (cal.read_seconds + cal.read_gene_seconds * k)
    start = cal.start_cpu if cpu else cal.start_seconds
    return float(start + own.sum() + read)


def memory_bytes(genes: list[GeneShape], job: JobShape, cal: Calibration) -> int:
    """Peak resident bytes of one process over ``genes``: its largest group held at once, with its read blocks
    and unsaved rows."""
    peak = 0
    for a in range(0, len(genes), job.group_genes):
        group = genes[a : a + job.group_genes]
        inputs = sum(g.n_inputs for g in group)
        read = (1 + job.num_workers) * min(cal.read_rows, job.cells) * inputs * 4
        rows = job.cells * sum(g.n_features for g in group) * job.itemsize if job.per_cell else 0
        peak = max(peak, len(group) * cal.memory_per_gene + read + min(rows, cal.buffer_bytes))
    return int(cal.memory_base + cal.memory_work + peak)


def output_bytes(genes: list[GeneShape], job: JobShape, cal: Calibration) -> tuple[int, int]:
    """Bytes of the per-cell files (0 without them) and of the summary (0 without one)."""
    files = 0.0
    if job.per_cell:
        rows = job.stored_rows or job.cells
        files = sum(cal.bytes_per_file + job.cells * cal.bytes_per_row + rows * g.n_features * cal.bytes_per_value
                    for g in genes)
    table = cal.summary_bytes + cal.summary_bytes_per_row * job.summary_rows_per_gene * len(genes) \
        if job.summary_rows_per_gene else 0.0
    return int(round(files)), int(round(table))


def predict(genes: list[GeneShape], job: JobShape, cal: Calibration, tasks: int | None = None,
            time_limit: float | None = None) -> Plan:
    """The :class:`Plan` of a job: one process, ``tasks`` array tasks, or as many as fit ``time_limit``."""
    if not genes:
        raise UserError("no genes to plan", "MODELS")
    own, own_cpu = gene_seconds(genes, job, cal), gene_seconds(genes, job, cal, cpu=True)

    def split(n: int) -> list[tuple[int, int]]:
        return [Shard(k, n).bounds(len(genes)) for k in range(n)]

    def longest(n: int) -> float:
        return max(task_seconds(genes[a:b], job, cal, own[a:b]) for a, b in split(n) if b > a)

    notes = []
    if tasks is None:
        tasks = 1
        if time_limit is not None:
            tasks = _fewest_tasks(len(genes), lambda n: longest(n) <= MARGIN * time_limit)
    tasks = max(1, min(int(tasks), len(genes)))
    parts = [(a, b) for a, b in split(tasks) if b > a]
    per_task = [task_seconds(genes[a:b], job, cal, own[a:b]) for a, b in parts]
    cpu = sum(task_seconds(genes[a:b], job, cal, own_cpu[a:b], cpu=True) for a, b in parts)
    serial = task_seconds(genes, job, cal, own)
    fits = time_limit is None or max(per_task) <= MARGIN * time_limit
    if not fits:
        slowest = int(np.argmax(own))
        notes.append(f"a task takes {format_seconds(max(per_task))}, over {MARGIN:.0%} of --time-limit "
                     f"{format_seconds(time_limit)}" + (f"; even one gene ({genes[slowest].gene}) takes "
                     f"{format_seconds(own[slowest] + cal.start_seconds)}: split its cells with run --shard"
                     if tasks == len(genes) else ""))
    files, table = output_bytes(genes, job, cal)
    memory = max(memory_bytes(genes[a:b], job, cal) for a, b in parts)
    return Plan(job.cells, len(genes), job.cells * len(genes), max(per_task) if tasks > 1 else serial, cpu, memory,
                files + table, tasks, max(per_task), serial, files, table, time_limit, fits, notes,
                calibration=asdict(cal))


def _fewest_tasks(n_genes: int, fits) -> int:
    """The smallest number of tasks for which ``fits(n)``, by bisection (the longest task shrinks as n grows);
    ``n_genes`` when none does."""
    if fits(1):
        return 1
    lo, hi = 1, n_genes  # fits(lo) is False
    if not fits(hi):
        return n_genes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_limit(text: str) -> float:
    """Seconds of a SLURM time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    m = _LIMIT.match(str(text).strip())
    if not m:
        raise UserError(f"expected a SLURM time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS), got {text!r}",
                        param="time_limit")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:  # M
        seconds = int(a) * 60
    if seconds <= 0:
        raise UserError(f"must be longer than zero, got {text!r}", param="time_limit")
    return float(seconds)


def format_seconds(seconds: float) -> str:
    """``1d 02:03:04``, ``02:03:04`` or ``12.3 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(math.ceil(seconds))
    days, rest = divmod(whole, 86400)
    h, rest = divmod(rest, 3600)
    text = f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def format_bytes(n: float) -> str:
    """``1.2 TB``-style (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
