"""``run-many``: one attribution file per gene checkpoint, the data file opened, hashed and read once.

A gene whose output already holds this very run (the same run identity) is skipped; an output of another
run is refused for that gene, naming what differs (outputs appear only when complete, so an existing file
is a finished one). A gene that fails is recorded in ``run-report.tsv`` and the run goes on
(:mod:`.gene_groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..data.covariates import parse_covariates
from ..data.job_index import DataIndex
from ..data.selection import read_tokens
from ..errors import UserError
from ..io.formats import OutputFormat, check_output, format_named
from ..model.checkpoint import load_checkpoint
from ..model.device import resolve_device
from .binding import bind
from .gene_groups import GROUP_GENES, REPORT, GeneOutcome, make_out_dir, open_data, recorded, run_gene_group
from .gene_job import GeneJob, JobSpec, Selection, open_job
from .lifecycle import existing_output
from .options import RunOptions
from .progress import Progress
from .shards import Shard
from .stream import Blocks
from .threads import set_threads


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
    output_format = format_named(fmt)
    params, info, batch_size = opts.check()  # flag errors before any file is touched
    set_threads(opts.threads)
    if opts.delta and not output_format.has_names:
        raise UserError("--delta is stored only in HDF5 or AnnData output (.h5/.hdf5/.h5ad)", param="fmt")
    covariates = parse_covariates(opts.covariates)
    device = resolve_device(opts.device)  # once: a missing GPU is one error, not one per gene
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    store = open_data(data, checkpoints, opts.hdf5_locking)
    try:
        make_out_dir(out_dir)
        with recorded(report, len(checkpoints), on_gene) as (outcomes, record):
            index = DataIndex(store)
            selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
            spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size, len(checkpoints)), selection,
                           0, len(selection.rows), data_sha256=index.sha256, resume=opts.resume,
                           hdf5_locking=opts.hdf5_locking, chunk_rows=opts.chunk_rows)
            for a in range(0, len(checkpoints), GROUP_GENES):
                group = checkpoints[a : a + GROUP_GENES]
                opener = partial(_open_gene, spec=replace(spec, group_size=len(group)), index=index, data=data,
                                 fmt=output_format, opts=opts, covariates=covariates, device=device)
                run_gene_group(group, lambda ck: out_dir / f"{ck.stem}{output_format.suffix}", opener, record,
                               opts.num_workers, progress)
    finally:
        store.close()
    return outcomes


def _open_gene(ck: Path, out: Path, *, spec: JobSpec, index: DataIndex, data: Path, fmt: OutputFormat,
               opts: RunOptions, covariates: list[str], device) -> GeneJob | None:
    """The gene's job, or None when its output already holds this run."""
    checkpoint = load_checkpoint(ck)
    identity = spec.identity(checkpoint.gene, covariates, checkpoint.sha256, fmt.name)
    if not opts.overwrite and existing_output(out, identity):
        return None
    check_output(out, True, [ck, data])
    model = bind(checkpoint, index, covariates, device, opts.rna_mod, opts.atac_mod)
    return open_job(model, spec, (out, fmt), ck, data)
