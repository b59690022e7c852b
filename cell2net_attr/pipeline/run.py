"""One command-line run: validate everything, stream cells through the engine into a writer."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from ..data.selection import read_tokens, resolve_tokens
from ..data.store import CellNames, Store
from ..engines.base import IGParams, check_engine
from ..errors import Terminated, UserError
from ..io.partial import PartialRun
from ..io.writers import check_output, open_writer
from ..model.checkpoint import file_sha256
from .binding import check_batching, load_model, run_cells
from .progress import Progress, make_progress
from .shards import Shard

DEFAULT_BATCH = {"fast": 256, "captum": 4}


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

    def params(self) -> IGParams:
        """The attribution parameters, validated."""
        return IGParams(self.n_steps, self.method, self.multiply_by_inputs, self.module_mode, self.seed,
                        self.delta).validate()


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
            store: Store | None = None, data_sha256: str | None = None, shard: Shard | None = None) -> RunResult:
    """Validate flags, inputs and output, then compute and write atomically.

    ``store`` and ``data_sha256`` let a multi-gene run open and hash ``data`` once. With a
    ``shard``, only that contiguous part of the selected cells is computed, into
    ``<stem>-0000K-of-0000N<suffix>``.
    """
    params = opts.params()
    check_engine(opts.engine)  # flags first: nothing is read before they are known good
    batch_size = opts.batch_size if opts.batch_size is not None else DEFAULT_BATCH[opts.engine]
    check_batching(batch_size, opts.num_workers)
    checkpoint, data = Path(checkpoint), Path(data)
    gene = opts.gene or checkpoint.stem
    out = Path(opts.out) if opts.out else Path(f"{gene}.tf_attr.h5")
    shard = shard or Shard(0, 1)
    if shard.count > 1:
        out = shard.path(out)
    check_output(out, opts.overwrite, [checkpoint, data])
    if opts.delta and out.suffix.lower() == ".npy":
        raise UserError("--delta is stored only in HDF5 or AnnData output (.h5/.hdf5/.h5ad)", out)
    tokens = read_tokens(opts.idx) if opts.idx is not None else None

    model = load_model(checkpoint, store if store is not None else data, gene, opts.covariates, opts.device,
                       opts.rna_mod, opts.atac_mod, opts.hdf5_locking)
    try:
        names = model.data.names
        selected = (resolve_tokens(tokens, model.data.obs_names, opts.idx_type) if tokens is not None
                    else np.arange(len(names)))
        start, stop = shard.bounds(len(selected))
        rows = selected[start:stop]
        meta = {
            "gene": model.gene, "n_steps": params.n_steps, "method": params.method,
            "multiply_by_inputs": params.multiply_by_inputs, "baseline": "zero", "engine": opts.engine,
            "device": str(model.device), "module_mode": params.module_mode,
            "seed": -1 if params.seed is None else params.seed, "tool": "cell2net-attr",
            "tool_version": __version__, "checkpoint": str(checkpoint), "data": str(data),
            "checkpoint_sha256": model.checkpoint.sha256 if model.checkpoint else "",
            "data_sha256": data_sha256 or file_sha256(data), "covariates": ",".join(model.covariates),
            "data_layout": model.data.layout,
            # what `merge` checks: where these rows sit in the whole selection, and which selection
            "shard_index": shard.index, "shard_count": shard.count, "row_start": start,
            "n_rows_total": len(selected), "selection_sha256": selection_digest(names, selected),
        }
        _compute_resumable(model, rows, out, meta, params, opts, batch_size, progress)
    finally:
        model.close()
    return RunResult(model.gene, out, len(rows), len(model.tfs), opts.engine, str(model.device))


def selection_digest(names: CellNames, rows: np.ndarray, chunk: int = 65536) -> str:
    """sha256 of the selected obs names in order (read chunk by chunk): shards of one run share it."""
    h = hashlib.sha256()
    for a in range(0, len(rows), chunk):
        for name in names.take(rows[a : a + chunk]):
            h.update(str(name).encode() + b"\n")
    return h.hexdigest()


class SelectedNames:
    """Names of the output rows, read slice by slice for the writers (never all at once)."""

    def __init__(self, names: CellNames, rows: np.ndarray) -> None:
        self.names, self.rows = names, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> list[str]:
        return [str(n) for n in self.names.take(self.rows[part])]


def _compute_resumable(model, rows: np.ndarray, out: Path, meta: dict, params: IGParams, opts: RunOptions,
                       batch_size: int, progress: Progress | None) -> None:
    """Compute into resumable chunks, then assemble the output and rename it into place.

    Interrupted (SIGINT/SIGTERM): finished batches are saved and the exception carries a
    ``resume_hint``. Failed otherwise: the chunks are removed.
    """
    partial = PartialRun(out, meta, opts.resume, lambda msg: warnings.warn(msg, stacklevel=2))
    done = partial.rows_done
    try:
        run_cells(model, rows[done:], params, opts.engine, batch_size, opts.num_workers,
                  lambda s, a, d: partial.add(done + s, a, d), progress or make_progress(opts.quiet))
        partial.flush()
        writer = open_writer(out, SelectedNames(model.data.names, rows), model.tfs, meta,
                             params.return_delta, opts.hdf5_locking, lambda: model.data.obs_table(rows))
        try:
            for start, attr, delta in partial.chunks():
                writer.write(start, attr, delta)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    except (KeyboardInterrupt, Terminated) as exc:
        partial.flush()
        exc.resume_hint = (f"{partial.rows_done}/{len(rows)} cells saved in {partial.dir}; "  # type: ignore[attr-defined]
                           f"rerun the same command with --resume to continue")
        raise
    except BaseException:
        partial.discard()
        raise
    partial.discard()
