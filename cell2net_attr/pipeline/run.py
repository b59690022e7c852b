"""One command-line run: validate everything, stream cells through the engine into one output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.selection import read_tokens
from ..errors import UserError
from ..io.formats import check_output, format_of
from ..io.schema import NPY_CANNOT_MERGE, VAR_INDEX_NAME
from .binding import load_model
from .driver import compute
from .gene_job import JobSpec, Selection, open_job
from .lifecycle import Lifecycle
from .options import RunOptions
from .progress import Progress, make_progress
from .shards import Shard
from .stream import Blocks
from .threads import set_threads


@dataclass
class RunResult:
    """What a run produced."""

    gene: str
    path: Path
    n_cells: int
    n_features: int
    engine: str
    device: str


def default_output(gene: str, target: str) -> Path:
    """``<gene>.tf_attr.h5`` (``<gene>.peak_attr.h5`` for peaks) in the working directory."""
    return Path(f"{gene}.{VAR_INDEX_NAME[target]}_attr.h5")


def run_one(checkpoint: Path, data: Path, opts: RunOptions, progress: Progress | None = None,
            shard: Shard | None = None) -> RunResult:
    """Validate flags, inputs and output, then compute and write atomically.

    With a ``shard``, only that contiguous part of the selected cells is computed, into
    ``<stem>-0000K-of-0000N<suffix>``.
    """
    params, info, batch_size = opts.check()  # flags first: nothing is read before they are known good
    set_threads(opts.threads)
    checkpoint, data = Path(checkpoint), Path(data)
    gene = opts.gene or checkpoint.stem
    out = Path(opts.out) if opts.out else default_output(gene, params.target)
    shard = shard or Shard(0, 1)
    if shard.count > 1:
        if not format_of(out).has_names:  # refused before any work: merge could not join them
            raise UserError(NPY_CANNOT_MERGE, out)
        out = shard.path(out)
    fmt = check_output(out, opts.overwrite, [checkpoint, data], opts.delta, opts.storage())
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    with Lifecycle() as life:
        life.claim_or_fail(out)  # one writer per output: a second run stops here, touching nothing
        check_output(out, opts.overwrite, [checkpoint, data])  # again: another run may have just finished it
        model = load_model(checkpoint, data, gene, opts.covariates, opts.device, opts.rna_mod, opts.atac_mod,
                           opts.hdf5_locking)
        try:
            index = model.data.index
            selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
            start, stop = shard.bounds(len(selection.rows))
            spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size), selection, start, stop, shard.index,
                           shard.count, index.sha256, opts.resume, opts.hdf5_locking, chunk_rows=opts.chunk_rows,
                           storage=opts.storage())
            job = life.add(open_job(model, spec, (out, fmt), checkpoint, data))
            compute([job], opts.num_workers, progress or make_progress(opts.quiet))
            life.finish(job)
        finally:
            model.close()
    return RunResult(model.gene, out, stop - start, len(model.features(params.target)), opts.engine,
                     str(model.device))
