"""One gene's output in progress, and the loop that computes several of them from shared row blocks.

A :class:`GeneJob` owns a gene's engine, its resumable chunks and its final path. :func:`compute`
reads each block of the selected rows once and feeds every job from it; :meth:`GeneJob.finish`
assembles the output from the chunks and renames it into place.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..data.gene_view import Batch
from ..data.rows import SharedRows
from ..data.selection import resolve_tokens
from ..data.store import CellNames
from ..data.where import where_mask
from ..engines.base import IGParams
from ..errors import Terminated, UserError
from ..io.partial import PartialRun
from ..io.schema import RunIdentity, output_attrs, output_format
from ..io.writers import open_writer
from .binding import AttributionModel, engine_feed
from .progress import NullProgress, Progress
from .stream import Blocks, EngineFeed, stream

#: Memory for finished rows not yet saved, shared by the genes of a group.
BUFFER_BYTES = 256 << 20


@dataclass(frozen=True)
class Selection:
    """The selected cells of a job (positions into the global ``obs``) and the digest of their names."""

    rows: np.ndarray
    digest: str

    @classmethod
    def resolve(cls, store, names: CellNames, tokens: list[str] | None, idx_type: str,
                where: str | None) -> Selection:
        """The cells of ``--idx`` tokens (all when ``None``) that satisfy ``--where``, in ``--idx`` order."""
        rows = resolve_tokens(tokens, names.index, idx_type) if tokens is not None else np.arange(len(names))
        if where:
            rows = rows[where_mask(store, where, len(names))[rows]]
            if not len(rows):
                raise UserError(f"no selected cell satisfies {where!r}", param="where")
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

    @property
    def rows(self) -> np.ndarray:
        """This shard's rows."""
        return self.selection.rows[self.row_start : self.row_stop]


@dataclass
class GeneJob:
    """One gene: its engine fed from shared blocks into resumable chunks, then its output."""

    model: AttributionModel
    out: Path
    spec: JobSpec
    attrs: dict
    partial: PartialRun
    feed: EngineFeed | None = None
    failed: BaseException | None = None
    seconds: float = 0.0
    done_before: int = field(default=0)

    @property
    def gene(self) -> str:
        """The gene."""
        return self.model.gene

    def accept(self, start: int, batch: Batch | UserError) -> None:
        """Attribute the rows of ``batch`` this gene has not saved yet (a resumed run skips the rest)."""
        if isinstance(batch, UserError):
            raise batch
        n = len(batch.tf_exp)
        if start + n <= self.done_before:
            return
        if start < self.done_before:
            cut = self.done_before - start
            batch = Batch(batch.peak_acc[cut:], batch.tf_exp[cut:], batch.covariates[cut:])
            start = self.done_before
        t0 = time.monotonic()
        self.feed.feed(start, batch)
        self.seconds += time.monotonic() - t0

    def finish(self) -> None:
        """Assemble the output from the saved chunks and the rows still in memory, and rename it into place."""
        t0 = time.monotonic()
        rows = self.spec.rows
        data = self.model.data
        features = self.model.features(self.spec.params.target)
        writer = open_writer(self.out, SelectedNames(data.names, rows), features, self.attrs,
                             self.spec.params.return_delta, self.spec.hdf5_locking, lambda: data.obs_table(rows))
        try:
            for start, attr, delta in self.partial.chunks():
                writer.write(start, attr, delta)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.partial.discard()
        self.seconds += time.monotonic() - t0

    def interrupted(self) -> str:
        """Save what is done; the hint for the user."""
        self.partial.flush()
        return (f"{self.partial.rows_done}/{len(self.spec.rows)} cells saved in {self.partial.dir}; "
                f"rerun the same command with --resume to continue")


def open_job(model: AttributionModel, out: Path, spec: JobSpec, checkpoint: Path, data: Path) -> GeneJob:
    """A gene's job: its identity and attributes, its resumable chunks and its engine."""
    params = spec.params
    identity = RunIdentity(
        target=params.target, gene=model.gene, engine=spec.engine, method=params.method, n_steps=params.n_steps,
        multiply_by_inputs=params.multiply_by_inputs, module_mode=params.module_mode,
        seed=-1 if params.seed is None else params.seed, delta=params.return_delta, format=output_format(out),
        covariates=",".join(model.covariates), checkpoint_sha256=model.checkpoint.sha256 if model.checkpoint else "",
        data_sha256=spec.data_sha256, selection_sha256=spec.selection.digest,
        n_rows_total=len(spec.selection.rows), shard_count=spec.shard_count)
    provenance = {"device": str(model.device), "tool": "cell2net-attr", "tool_version": __version__,
                  "checkpoint": str(checkpoint), "data": str(data), "data_layout": model.data.layout}
    attrs = output_attrs(identity, spec.shard_index, spec.row_start, provenance)
    feed = engine_feed(model, spec.engine, params, spec.blocks.compute)  # before any file is made
    place = {**identity.attrs(), "shard_index": spec.shard_index, "row_start": spec.row_start}
    chunk_rows = spec.chunk_rows or max(256, min(16384, BUFFER_BYTES // (4 * max(1, len(model.features(
        params.target))) * spec.group_size)))
    partial = PartialRun(out, place, spec.resume, lambda msg: warnings.warn(msg, stacklevel=2), chunk_rows)
    feed.sink = partial.add
    return GeneJob(model, out, spec, attrs, partial, feed, done_before=partial.rows_done)


def save_for_resume(exc: BaseException, jobs: list[GeneJob]) -> None:
    """On an interrupt: save every live job's finished chunks and give ``exc`` the hint for the user (once)."""
    if hasattr(exc, "resume_hint"):
        return
    hints = [j.interrupted() for j in jobs if j.failed is None]
    exc.resume_hint = hints[0] if len(hints) == 1 else (  # type: ignore[attr-defined]
        f"finished chunks of {len(hints)} genes saved; rerun the same command with --resume to continue")


def compute(jobs: list[GeneJob], num_workers: int = 0, progress: Progress | None = None,
            isolate: bool = False) -> None:
    """Feed every job from the shared row blocks of their selection, each block read once.

    With ``isolate``, a gene that fails is recorded in its ``failed`` and the others go on; otherwise
    its error propagates. Interrupted (SIGINT/SIGTERM), every job saves its finished chunks and the
    exception carries a ``resume_hint``.
    """
    if not jobs:
        return
    spec = jobs[0].spec
    rows = spec.rows
    first = min(j.done_before for j in jobs)
    reader = SharedRows([j.model.data for j in jobs])
    progress = progress or NullProgress()
    label = jobs[0].gene if len(jobs) == 1 else f"{len(jobs)} genes"
    progress.start(len(rows) - first, label)

    def feeder(job: GeneJob):
        def feed(start: int, batch) -> None:
            if job.failed is not None:
                return
            try:
                job.accept(first + start, batch)
            except Exception as exc:  # noqa: BLE001 - isolated: one gene's failure must not stop the others
                if not isolate:
                    raise
                job.failed = exc
                job.partial.discard()
        return feed

    try:
        stream([feeder(j) for j in jobs], lambda r: reader.read(r, strict=not isolate), rows[first:],
               spec.blocks.read, num_workers, progress.advance)
    except (KeyboardInterrupt, Terminated) as exc:
        save_for_resume(exc, jobs)
        raise
    except BaseException:
        for j in jobs:
            j.partial.discard()
        raise
    finally:
        progress.stop()
