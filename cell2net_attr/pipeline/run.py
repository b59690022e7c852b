"""One command-line run: validate everything, stream cells through the engine into a writer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.selection import read_tokens
from ..engines.base import IGParams
from ..engines.registry import EngineInfo, check_engine
from ..errors import Terminated, UserError
from ..io.lock import OutputLock
from ..io.schema import NPY_CANNOT_MERGE, VAR_INDEX_NAME, output_format
from ..io.writers import check_output
from ..model.checkpoint import file_sha256
from .binding import check_batching, load_model
from .gene_job import JobSpec, Selection, compute, open_job, save_for_resume
from .progress import Progress, make_progress
from .shards import Shard
from .stream import Blocks


@dataclass
class RunOptions:
    """Everything ``cell2net-attr run`` takes besides the two input files."""

    out: Path | None = None
    gene: str | None = None
    covariates: str | list[str] | None = None
    idx: str | None = None
    idx_type: str = "auto"
    n_steps: int = 100
    method: str = "gausslegendre"
    multiply_by_inputs: bool = True
    engine: str = "fast"
    module_mode: str = "eval"
    seed: int | None = None
    batch_size: int | None = None
    num_workers: int = 1
    device: str = "auto"
    delta: bool = False
    overwrite: bool = False
    rna_mod: str = "rna"
    atac_mod: str = "atac"
    hdf5_locking: bool | None = None
    quiet: bool = False
    resume: bool = False
    where: str | None = None
    target: str = "tfs"
    chunk_rows: int | None = None

    def params(self) -> IGParams:
        """The attribution parameters (checked when made)."""
        return IGParams(self.n_steps, self.method, self.multiply_by_inputs, self.module_mode, self.seed,
                        self.delta, self.target)

    def check(self) -> tuple[IGParams, EngineInfo, int]:
        """Parameters, engine and batch size, checked before any file is read."""
        params = self.params()
        info = check_engine(self.engine, params)
        batch_size = self.batch_size if self.batch_size is not None else info.default_batch
        check_batching(batch_size, self.num_workers)
        return params, info, batch_size


@dataclass
class RunResult:
    """What a run produced."""

    gene: str
    path: Path
    n_cells: int
    n_tfs: int
    engine: str
    device: str


def run_one(checkpoint: Path, data: Path, opts: RunOptions, progress: Progress | None = None,
            shard: Shard | None = None) -> RunResult:
    """Validate flags, inputs and output, then compute and write atomically.

    With a ``shard``, only that contiguous part of the selected cells is computed, into
    ``<stem>-0000K-of-0000N<suffix>``.
    """
    params, info, batch_size = opts.check()  # flags first: nothing is read before they are known good
    checkpoint, data = Path(checkpoint), Path(data)
    gene = opts.gene or checkpoint.stem
    out = Path(opts.out) if opts.out else Path(f"{gene}.{VAR_INDEX_NAME[params.target]}_attr.h5")
    shard = shard or Shard(0, 1)
    if shard.count > 1:
        if output_format(out) == "npy":  # refused before any work: merge could not join them
            raise UserError(NPY_CANNOT_MERGE, out)
        out = shard.path(out)
    check_output(out, opts.overwrite, [checkpoint, data], opts.delta)
    lock = OutputLock(out).acquire()  # one writer per output: a second run stops here, touching nothing
    try:
        check_output(out, opts.overwrite, [checkpoint, data])  # again: another run may have just finished it
        return _compute_one(checkpoint, data, gene, out, shard, opts, params, info, batch_size, progress)
    finally:
        lock.release()


def _compute_one(checkpoint: Path, data: Path, gene: str, out: Path, shard: Shard, opts: RunOptions,
                 params: IGParams, info: EngineInfo, batch_size: int, progress: Progress | None) -> RunResult:
    """Select the cells, compute them into resumable chunks, and write the output (under the lock)."""
    tokens = read_tokens(opts.idx) if opts.idx is not None else None

    model = load_model(checkpoint, data, gene, opts.covariates, opts.device, opts.rna_mod, opts.atac_mod,
                       opts.hdf5_locking)
    try:
        names = model.data.names
        selection = Selection.resolve(model.data.store, names, tokens, opts.idx_type, opts.where)
        start, stop = shard.bounds(len(selection.rows))
        spec = JobSpec(params, opts.engine, Blocks.choose(info, batch_size), selection, start, stop, shard.index,
                       shard.count, file_sha256(data), opts.resume, opts.hdf5_locking, chunk_rows=opts.chunk_rows)
        job = open_job(model, out, spec, checkpoint, data)
        try:
            compute([job], opts.num_workers, progress or make_progress(opts.quiet))
            job.finish()
        except (KeyboardInterrupt, Terminated) as exc:  # the chunks stay for --resume
            save_for_resume(exc, [job])
            raise
        except BaseException:
            job.partial.discard()
            raise
    finally:
        model.close()
    features = model.features(params.target)
    return RunResult(model.gene, out, stop - start, len(features), opts.engine, str(model.device))
