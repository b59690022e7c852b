"""One gene's job: its engine fed from shared row blocks into its sink, and its output.

A :class:`GeneJob` owns a gene's engine feed, the sink of its finished rows (resumable chunks beside the
output, or arrays in memory for the notebook API) and, for a file, its final path and attributes. The
loop that feeds many jobs is :func:`cell2net_attr.pipeline.driver.compute`; what happens to the output when
the job is interrupted, fails or finishes is the lifecycle's (:mod:`cell2net_attr.pipeline.lifecycle`).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..data.job_index import DataIndex
from ..data.rows import Batch
from ..data.selection import resolve_tokens
from ..data.store import CellNames
from ..data.where import describe_columns, where_mask
from ..engines.base import IGParams
from ..errors import UserError
from ..io.formats import OutputFormat
from ..io.partial import PartialRun
from ..io.schema import RunIdentity, output_attrs
from ..io.storage import Storage
from .binding import AttributionModel, engine_feed
from .stream import Blocks, EngineFeed

#: Memory for finished rows not yet saved, shared by the genes of a group.
BUFFER_BYTES = 256 << 20


@dataclass(frozen=True)
class Selection:
    """The selected cells of a job (positions into the global ``obs``) and the digest of their names."""

    rows: np.ndarray
    digest: str

    @classmethod
    def resolve(cls, index: DataIndex, tokens: list[str] | None, idx_type: str, where: str | None) -> Selection:
        """The cells of ``--idx`` tokens (all when ``None``) that satisfy ``--where``, in ``--idx`` order."""
        names = index.names
        rows = resolve_tokens(tokens, names.index, idx_type) if tokens is not None else np.arange(len(names))
        if where:
            rows = rows[where_mask(index.store, where, len(names))[rows]]
            if not len(rows):
                raise UserError(f"no selected cell satisfies {where!r} ({describe_columns(index.store, where)})",
                                param="where")
        return cls.of(names, rows)

    @classmethod
    def of(cls, names: CellNames, rows: np.ndarray) -> Selection:
        """``rows`` with the sha256 of their names in order (read chunk by chunk): shards of one run share it."""
        h = hashlib.sha256()
        for a in range(0, len(rows), 65536):
            for name in names.take(rows[a : a + 65536]):
                h.update(str(name).encode() + b"\n")
        return cls(rows, h.hexdigest())


class SelectedNames:
    """Names of the output rows, read slice by slice for the writers (never all at once)."""

    def __init__(self, names: CellNames, rows: np.ndarray) -> None:
        self.names, self.rows = names, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> list[str]:
        return [str(n) for n in self.names.take(self.rows[part])]


@dataclass
class JobSpec:
    """What every gene of a job shares: parameters, engine, blocks, the selection and where it sits."""

    params: IGParams
    engine: str
    blocks: Blocks
    selection: Selection
    row_start: int
    row_stop: int
    shard_index: int = 0
    shard_count: int = 1
    data_sha256: str = ""
    resume: bool = False
    hdf5_locking: bool | None = None
    group_size: int = 1  # genes computed together: their unsaved rows share BUFFER_BYTES
    chunk_rows: int | None = None  # rows per saved chunk (--chunk-rows); None = sized to the buffer
    storage: Storage = Storage()  # how the per-cell values are stored (--dtype, --compression)

    @property
    def rows(self) -> np.ndarray:
        """This shard's rows."""
        return self.selection.rows[self.row_start : self.row_stop]

    def identity(self, gene: str, covariates: list[str], checkpoint_sha256: str, fmt: str) -> RunIdentity:
        """The identity of this job's output for one gene: what an existing output must match to count as done."""
        params = self.params
        return RunIdentity(
            target=params.target, gene=gene, engine=self.engine, method=params.method, n_steps=params.n_steps,
            multiply_by_inputs=params.multiply_by_inputs, module_mode=params.module_mode,
            seed=-1 if params.seed is None else params.seed, delta=params.return_delta, format=fmt,
            covariates=",".join(covariates), checkpoint_sha256=checkpoint_sha256, data_sha256=self.data_sha256,
            selection_sha256=self.selection.digest, n_rows_total=len(self.selection.rows),
            shard_count=self.shard_count, dtype=self.storage.dtype, compression=self.storage.compression)


class MemoryRows:
    """Where a notebook job's rows go: arrays in memory (nothing to save when interrupted)."""

    def __init__(self, n_rows: int, n_features: int, with_delta: bool) -> None:
        self.attr = np.empty((n_rows, n_features), dtype=np.float32)
        self.delta = np.empty(n_rows, dtype=np.float32) if with_delta else None
        self.rows_done = 0

    def add(self, start: int, attr: np.ndarray, delta: np.ndarray | None) -> None:
        """Store finished rows ``start..start+len(attr)``."""
        self.attr[start : start + len(attr)] = attr
        if self.delta is not None and delta is not None:
            self.delta[start : start + len(delta)] = delta

    def flush(self) -> None:
        """Nothing to save."""

    def discard(self) -> None:
        """Nothing to remove."""


@dataclass(frozen=True)
class Output:
    """Where a job's output goes: its final path, format and attributes."""

    path: Path
    fmt: OutputFormat
    attrs: dict


@dataclass
class GeneJob:
    """One gene: its engine fed from shared blocks into its sink, then, for a file, its output."""

    model: AttributionModel
    spec: JobSpec
    feed: EngineFeed
    sink: PartialRun | MemoryRows
    output: Output | None = None
    checkpoint: Path | None = None
    failed: BaseException | None = None
    seconds: float = 0.0
    done_before: int = field(default=0)
    moments: object | None = None  # the group sums a summary accumulates (summary_job.GeneMoments)

    @property
    def gene(self) -> str:
        """The gene."""
        return self.model.gene

    @property
    def engine(self):
        """The gene's engine."""
        return self.feed.engine

    @property
    def path(self) -> Path | None:
        """Where its output goes (None: kept in memory)."""
        return self.output.path if self.output is not None else None

    def accept(self, start: int, batch: Batch | UserError) -> None:
        """Attribute the rows of ``batch`` this gene has not saved yet (a resumed run skips the rest)."""
        if isinstance(batch, UserError):
            raise batch
        if start + len(batch) <= self.done_before:
            return
        if start < self.done_before:
            batch = batch.rows(slice(self.done_before - start, None))
            start = self.done_before
        t0 = time.monotonic()
        self.feed.feed(start, batch)
        self.seconds += time.monotonic() - t0

    @property
    def resumable(self) -> bool:
        """Whether its finished rows are saved in chunks (a file output, or a summary's sums)."""
        return isinstance(self.sink, PartialRun)

    def write_output(self) -> None:
        """Assemble the output from the saved chunks and the rows still in memory and rename it into place
        (without a per-cell output, only remove the chunks: a summary has taken their sums)."""
        if self.output is None:
            self.sink.discard()
            return
        t0 = time.monotonic()
        rows, data = self.spec.rows, self.model.data
        writer = self.output.fmt.open_writer(
            self.output.path, SelectedNames(data.names, rows), self.model.features(self.spec.params.target),
            self.output.attrs, self.spec.params.return_delta, self.spec.hdf5_locking, lambda: data.obs_table(rows),
            self.spec.storage)
        try:
            for start, attr, delta in self.sink.chunks():
                writer.write(start, attr, delta)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.sink.discard()
        self.seconds += time.monotonic() - t0

    def save(self) -> int:
        """Save what is done (interrupted); the number of rows saved."""
        self.sink.flush()
        return self.sink.rows_done

    def discard(self) -> None:
        """Remove the rows saved for ``--resume``."""
        self.sink.discard()

    def resume_note(self, saved: int) -> str:
        """What was saved, where, and how to continue."""
        return (f"{saved}/{len(self.spec.rows)} cells saved in {self.sink.dir}; rerun the same command with "
                f"--resume to continue")


def open_job(model: AttributionModel, spec: JobSpec, out: tuple[Path, OutputFormat] | None = None,
             checkpoint: Path | None = None, data: Path | None = None, moments=None,
             state: Path | None = None) -> GeneJob:
    """A gene's job: its engine and, for an output file ``out`` (path and format), its identity, attributes and
    resumable chunks; without ``out``, its rows are kept in memory.

    ``moments`` (a :class:`~cell2net_attr.pipeline.summary_job.GeneMoments`) also gathers the rows' group sums,
    saved with each chunk. Without ``out`` but with a ``state`` path, no rows are kept: only the sums, in
    resumable chunks there (a summary without per-cell files).
    """
    params = spec.params
    n_features = len(model.features(params.target))
    feed = engine_feed(model, spec.engine, params, spec.blocks.compute)  # before any file is made
    if out is None and state is None:
        sink = MemoryRows(len(spec.rows), n_features, params.return_delta)
        feed.sink = sink.add
        return GeneJob(model, spec, feed, sink)
    path, fmt = out if out is not None else (state, None)
    identity = spec.identity(model.gene, model.covariates, model.checkpoint.sha256 if model.checkpoint else "",
                             fmt.name if fmt is not None else "summary")
    provenance = {"device": str(model.device), "tool": "cell2net-attr", "tool_version": __version__,
                  "checkpoint": str(checkpoint), "data": str(data), "data_layout": model.data.layout}
    attrs = output_attrs(identity, spec.shard_index, spec.row_start, provenance)
    place = {**identity.attrs(), "shard_index": spec.shard_index, "row_start": spec.row_start}
    if moments is not None:
        place["summary"] = moments.key
    item = spec.storage.itemsize
    chunk_rows = spec.chunk_rows or max(256, min(16384, BUFFER_BYTES // (item * max(1, n_features) * spec.group_size)))
    partial = PartialRun(path, place, spec.resume, lambda msg: warnings.warn(msg, stacklevel=2), chunk_rows,
                         side=moments, keep_rows=out is not None)
    feed.sink = _stored(partial, moments, spec.storage)
    output = Output(path, fmt, attrs) if out is not None else None
    return GeneJob(model, spec, feed, partial, output, checkpoint, done_before=partial.rows_done, moments=moments)


def _stored(partial: PartialRun, moments, storage: Storage) -> Callable[[int, np.ndarray, np.ndarray | None], None]:
    """The sink of a file job: each block's rows as they are stored (rounded to ``--dtype``), into the group
    sums when there are (so the summary is that of the stored values), then into the chunks."""
    if moments is None and storage.dtype == "float32":
        return partial.add

    def sink(start: int, attr: np.ndarray, delta: np.ndarray | None) -> None:
        attr = storage.cast(attr)
        if moments is not None:
            moments.add(start, attr)
        partial.add(start, attr, delta)
    return sink
