"""``plan MODELS DATA [run-many options]``: the job's sizes read, its costs calibrated, its :class:`~.plan.Plan`.

Nothing of the job is written: the checkpoints are read for their shapes, the data file for its cells and the
selection (``--idx``, ``--where``), the summary's column for its groups, and a few cells of a few genes are
computed through the real driver into a scratch folder (removed after) to calibrate the costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data.covariates import parse_covariates
from ..data.job_index import DataIndex
from ..data.obs_groups import read_obs_groups
from ..data.selection import read_tokens
from ..data.store import H5Store
from ..errors import UserError
from ..io.formats import format_named
from ..io.writers import allocated_rows
from ..model.checkpoint import load_checkpoint
from ..model.device import resolve_device
from .calibrate import Context, Timer, calibrate, hash_seconds, seconds_since_start
from .gene_job import JobSpec, Selection
from .options import RunOptions
from .plan import JobShape, Plan, gene_shape, predict
from .run_many import GROUP_GENES
from .stream import Blocks
from .summary_job import check_summary_path
from .threads import set_threads


def plan_job(checkpoints: list[Path], data: Path, fmt: str, opts: RunOptions, *, tasks: int | None = None,
             time_limit: float | None = None, cells: int | None = None, genes: int = 2, scratch: Path | None = None,
             log: Callable[[str], None] | None = None) -> Plan:
    """Predict what ``run-many CHECKPOINTS DATA --format FMT`` with ``opts`` costs (see the module docstring).

    ``tasks``: as a SLURM array of that many tasks; ``time_limit`` (seconds): the fewest tasks that fit it.
    ``cells`` and ``genes``: the calibration's size. ``scratch``: where the calibration writes (its outputs'
    disk: the job's ``--out-dir``), else the system's temporary folder.
    """
    begun = Timer(seconds_since_start(), time.process_time())  # what a process costs before its work: imports
    output_format = format_named(fmt)
    params, info, batch_size = opts.check()
    if opts.per_cell:
        opts.storage().check(output_format.name)
    if opts.summary is not None:
        check_summary_path(Path(opts.summary), folder=False)
    for name, value in (("calibration_cells", cells), ("calibration_genes", genes), ("tasks", tasks)):
        if value is not None and value < (2 if name == "calibration_cells" else 1):
            raise UserError(f"must be at least {2 if name == 'calibration_cells' else 1}, got {value}", param=name)
    if scratch is not None and not Path(scratch).is_dir():
        raise UserError("does not exist (the calibration writes its scratch files there)", scratch)
    threads = set_threads(opts.threads)
    covariates = parse_covariates(opts.covariates)
    device = resolve_device(opts.device)
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    t0, c0 = time.perf_counter(), time.process_time()
    store = H5Store(data, locking=opts.hdf5_locking)
    try:
        index = DataIndex(store)
        selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
        hashing = hash_seconds(Path(data))
        start = Timer(begun.wall + time.perf_counter() - t0 + hashing, begun.cpu + time.process_time() - c0 + hashing)
        shapes = [gene_shape(ck.stem, load_checkpoint(ck).spec, params.target) for ck in checkpoints]
        codes, order, present = _groups(index, selection, opts.groupby)
        kept = [min(opts.top or s.n_features, s.n_features) for s in shapes]
        rows_per_gene = int(round(present * float(np.mean(kept)))) if opts.summary is not None else 0
        spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size, len(checkpoints)), selection, 0,
                       len(selection.rows), storage=opts.storage(), group_size=min(GROUP_GENES, len(checkpoints)))
        suffix = _suffix(opts.summary) if opts.summary is not None else None
        ctx = Context(checkpoints, shapes, index, selection, spec, output_format if opts.per_cell else None,
                      covariates, device, opts.rna_mod, opts.atac_mod, opts.num_workers, codes, order, suffix,
                      opts.groupby, opts.top, scratch)
        calibration = calibrate(ctx, start, cells, genes, log)
    finally:
        store.close()
    n = len(selection.rows)
    padded = output_format.has_names and opts.compression == "none"  # HDF5 allocates whole chunks
    job = JobShape(n, opts.per_cell, rows_per_gene, GROUP_GENES, opts.num_workers, opts.storage().itemsize,
                   allocated_rows(n) if padded else n)
    plan = predict(shapes, job, calibration, tasks, time_limit)
    plan.threads, plan.device = threads, str(device)
    return plan


def _groups(index: DataIndex, selection: Selection, groupby: str | None) -> tuple[np.ndarray, list, int]:
    """The summary's group of each selected cell, the groups' order, and how many have a selected cell."""
    if groupby is None:
        return np.zeros(len(selection.rows), dtype=np.int64), [None], 1
    groups = read_obs_groups(index.store, groupby)
    codes = groups.codes[selection.rows]
    return codes, list(groups.order), int(len(np.unique(codes[codes >= 0])))


def _suffix(path: Path) -> str:
    """The summary's format, as the suffix its calibration table is written with."""
    name = Path(path).name.lower()
    return ".h5ad" if name.endswith(".h5ad") else "".join(Path(name).suffixes[-2:]) if name.endswith(".gz") \
        else Path(name).suffix
