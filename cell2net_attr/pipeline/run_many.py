"""``run-many``: one attribution file per gene checkpoint, the data file opened, hashed and read once.

A gene whose output already holds this very run (the same run identity) is skipped; an output of another
run is refused for that gene, naming what differs (outputs appear only when complete, so an existing file
is a finished one). A gene that fails is recorded in ``run-report.tsv`` and the run goes on
(:mod:`.gene_groups`).

With ``--summary``, the group table ``summarize`` would give is accumulated as the genes compute
(:mod:`cell2net_attr.pipeline.summary_job`), with or without the per-cell files (``--no-per-cell``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from .summary_job import SummaryJob, check_summary_path
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
    if shard is not None and shard.count > 1:
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
    store = open_data(data, checkpoints, opts.hdf5_locking)
    try:
        make_out_dir(out_dir)
        with recorded(report, len(checkpoints), on_gene) as (outcomes, record):
            index = DataIndex(store)
            selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
            spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size, len(checkpoints)), selection,
                           0, len(selection.rows), data_sha256=index.sha256, resume=opts.resume,
                           hdf5_locking=opts.hdf5_locking, chunk_rows=opts.chunk_rows, storage=opts.storage())
            summary = (SummaryJob(Path(opts.summary), opts.groupby, opts.top, spec, covariates, index, shard,
                                  opts.overwrite) if opts.summary is not None else None)
            with summary or contextlib.nullcontext():
                for a in range(0, len(checkpoints), GROUP_GENES):
                    group = checkpoints[a : a + GROUP_GENES]
                    genes = _Genes(replace(spec, group_size=len(group)), index, data, out_dir, output_format, opts,
                                   covariates, device, summary)
                    run_gene_group(group, genes.output_of, genes.open, record, opts.num_workers, progress,
                                   claim=opts.per_cell, before_finish=genes.finish if summary else None)
                if summary is not None:
                    _write_summary(summary, [ck.stem for ck in checkpoints], on_note)
    finally:
        store.close()
    return outcomes


@dataclass
class _Genes:
    """What every gene of a group shares, and how one is opened and finished."""

    spec: JobSpec
    index: DataIndex
    data: Path
    out_dir: Path
    fmt: OutputFormat
    opts: RunOptions
    covariates: list[str]
    device: object
    summary: SummaryJob | None = None

    def output_of(self, ck: Path) -> Path:
        """What the report names as a gene's output: its file, else the summary (claimed whole, for the job)."""
        return self.out_dir / f"{ck.stem}{self.fmt.suffix}" if self.opts.per_cell else self.summary.path

    def open(self, ck: Path, out: Path) -> GeneJob | None:
        """The gene's job, or None when what it would write holds this run already."""
        per_cell, summary, redo = self.opts.per_cell, self.summary, self.opts.overwrite
        checkpoint = load_checkpoint(ck)
        identity = self.spec.identity(checkpoint.gene, self.covariates, checkpoint.sha256, self.fmt.name)
        has_file = per_cell and not redo and existing_output(out, identity)
        has_rows = summary is not None and not redo and summary.has(checkpoint.gene, checkpoint.sha256)
        if (has_file or not per_cell) and (has_rows or summary is None):
            return None
        model = bind(checkpoint, self.index, self.covariates, self.device, self.opts.rna_mod, self.opts.atac_mod)
        features = model.features(self.spec.params.target)
        if has_file:  # the summary alone is missing it: its sums are read back from its output
            summary.from_output(checkpoint.gene, checkpoint.sha256, features, out)
            return None
        if per_cell:
            check_output(out, True, [ck, self.data])
        moments = summary.moments(len(features)) if summary is not None else None
        state = None if per_cell else summary.state_path(checkpoint.gene)
        return open_job(model, self.spec, (out, self.fmt) if per_cell else None, ck, self.data, moments, state)

    def finish(self, job: GeneJob) -> None:
        """Keep the gene's sums in the summary (before its chunks may go)."""
        self.summary.finish(job.gene, job.model.checkpoint.sha256, job.model.features(self.spec.params.target),
                            job.moments.total())


def _write_summary(summary: SummaryJob, genes: list[str], on_note: Callable[[str], None] | None) -> None:
    """Write the job's table and hand its notes (cells left out, empty groups) to ``on_note``."""
    written = summary.write(genes)
    notes = written.notes() if written is not None else [f"no gene has rows: {summary.path} is not written"]
    for note in notes if on_note is not None else ():
        on_note(note)
