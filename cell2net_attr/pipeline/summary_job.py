"""``run-many --summary``: the table ``summarize`` would give, accumulated while the genes are computed.

Per gene and group, float64 sums (:class:`~cell2net_attr.downstream.moments.GroupMoments`) gather the rows as
they are computed (:class:`GeneMoments`) and are saved with each of the gene's chunks, so an interrupted gene
resumes exactly. A finished gene's sums are kept under ``.<summary>.partial/``
(:class:`~cell2net_attr.io.finished.FinishedParts`) until the table is written, at the end of the job, with
``summarize``'s own definitions and writers (:func:`~cell2net_attr.downstream.summary.gene_table`,
:func:`~cell2net_attr.downstream.tables_io.write_summary`).

What the table holds is recorded beside it, in ``.<summary>.run.json``: the run identity every gene shares
(parameters, data, selection, covariates), the group column, ``--top``, the groups' order, the shard, and
each gene's checkpoint sha256. A rerun skips the genes whose rows are in the table, and refuses a table of
another run instead of adding to it. One run writes a summary at a time (its lock is held for the job).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.job_index import DataIndex
from ..data.obs_groups import read_obs_groups
from ..downstream import tables_io
from ..downstream.moments import GroupMoments
from ..downstream.summary import Summary, gene_table
from ..errors import UserError
from ..io.finished import FinishedParts
from ..io.formats import format_of, iter_rows, read_header
from ..io.lock import OutputLock
from ..io.schema import ENCODING_TYPES, ENCODING_VERSION, RunIdentity, identity_sidecar
from ..io.writers import atomic_output, plain_value
from .gene_job import JobSpec
from .shards import Shard

#: The run-identity fields that are a gene's own, recorded per gene; every other one is the job's.
GENE_FIELDS = ("gene", "checkpoint_sha256")
#: Table-level fields of the sidecar that two parts of one table share (all but the shard and the genes).
SHARED = ("encoding-type", "target", "groupby", "top", "groups", "job")


class GeneMoments:
    """One gene's group sums while it computes; the side of its saved chunks (:class:`~.partial.ChunkSide`)."""

    def __init__(self, codes: np.ndarray, n_groups: int, n_features: int, key: str) -> None:
        self.codes, self.key = codes, key  # the group of each output row; what the codes are, for resumes
        self.saved = GroupMoments.zeros(n_groups, n_features)  # rows in saved chunks
        self.pending = GroupMoments.zeros(n_groups, n_features)  # rows since

    def add(self, start: int, attr: np.ndarray) -> None:
        """Rows ``start..start+len(attr)`` of the job, as stored."""
        self.pending.add(self.codes[start : start + len(attr)], attr)

    def take(self) -> dict[str, np.ndarray]:
        """The sums over the rows being saved as a chunk."""
        arrays = self.pending.arrays()
        self.saved.merge(self.pending)
        self.pending = GroupMoments.zeros(*self.saved.total.shape)
        return arrays

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """A saved chunk's sums (a resumed gene)."""
        self.saved.merge(GroupMoments.from_arrays(arrays))

    def total(self) -> GroupMoments:
        """The sums over every row so far."""
        moments = self.saved.copy()
        moments.merge(self.pending)
        return moments


def check_summary_path(path: Path, inputs: list[Path] = (), folder: bool = True) -> None:
    """``--summary`` names a table or AnnData file (not stdout: a rerun must find it), not an input; with
    ``folder``, in a writable folder (without: its suffix alone, before ``--out-dir`` is made)."""
    if str(path) == "-":
        raise UserError("needs a file (.tsv, .csv, .h5ad): a rerun reads the table to skip its genes",
                        param="summary")
    if folder:
        tables_io.check_table_output(path, True, inputs, h5ad=True)
    elif not tables_io.is_h5ad(path):
        try:
            tables_io.table_separator(path)
        except UserError:
            raise UserError(f"unknown output format {Path(path).suffix!r}: use .tsv, .csv (optionally .gz) or "
                            f".h5ad", path) from None


class SummaryJob:
    """The table of one ``run-many --summary`` job (see the module docstring); a context manager (its lock)."""

    def __init__(self, path: Path, groupby: str | None, top: int | None, spec: JobSpec, covariates: list[str],
                 index: DataIndex, shard: Shard | None = None, overwrite: bool = False) -> None:
        shard = shard or Shard(0, 1)
        self.path = shard.path(Path(path)) if shard.count > 1 else Path(path)
        check_summary_path(self.path, [Path(index.source)])
        self.groupby, self.top, self.target = groupby, top, spec.params.target
        if groupby is not None:
            groups = read_obs_groups(index.store, groupby)
            self.codes, self.order = groups.codes[spec.rows], list(groups.order)
        else:
            self.codes, self.order = np.zeros(len(spec.rows), dtype=np.int64), [None]
        # the values summed are those stored (their --dtype), however the per-cell files are compressed
        job = replace(spec.identity("", covariates, "", "summary"), compression="none").attrs()
        self.meta = {"encoding-type": ENCODING_TYPES["summary"], "encoding-version": ENCODING_VERSION,
                     "target": self.target, "groupby": groupby or "", "top": top or 0,
                     "groups": [plain_value(g) for g in self.order] if groupby else [],
                     "job": {k: v for k, v in job.items() if k not in GENE_FIELDS},
                     "shard_index": shard.index, "shard_count": shard.count}
        self.meta = json.loads(json.dumps(self.meta, default=plain_value))
        self._lock = OutputLock(self.path).acquire()  # one writer per summary, before anything is read
        try:
            self.existing, self.known = ({}, {}) if overwrite else self._read_existing()
            self.parts = FinishedParts(self.path, self.meta, _warn)
            if overwrite:
                self.parts.discard()
                self.parts = FinishedParts(self.path, self.meta, _warn)
            self.finished = self.parts.load()
        except BaseException:
            self._lock.release()
            raise

    def __enter__(self) -> SummaryJob:
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    @property
    def side_key(self) -> str:
        """What a gene's saved sums are over (its chunks are resumed only by a run with the same)."""
        return f"groups of {self.groupby or '(all cells)'}"

    def has(self, gene: str, checkpoint_sha256: str) -> bool:
        """Whether ``gene``'s rows are done (in the table or finished); another checkpoint's are an error."""
        if gene in self.finished:
            theirs = self.finished[gene][0].get("checkpoint_sha256")
        elif gene in self.existing:
            theirs = self.known.get(gene)
        else:
            return False
        if theirs != checkpoint_sha256:
            raise UserError(f"holds the rows of {gene} from another checkpoint (sha256 {str(theirs)[:12]}, this "
                            f"run's {checkpoint_sha256[:12]}); pass --overwrite to recompute it, or write another "
                            f"--summary", self.path)
        return True

    def moments(self, n_features: int) -> GeneMoments:
        """The sums a gene of ``n_features`` accumulates."""
        return GeneMoments(self.codes, len(self.order), n_features, self.side_key)

    def state_path(self, gene: str) -> Path:
        """Where a gene without per-cell output keeps its chunks (inside the summary's partial directory)."""
        return self.parts.path(gene).with_suffix("")

    def finish(self, gene: str, checkpoint_sha256: str, features: list[str], moments: GroupMoments) -> None:
        """Keep a finished gene's sums until the table is written."""
        arrays = {**moments.arrays(), "features": np.asarray([str(f) for f in features])}
        identity = {"checkpoint_sha256": checkpoint_sha256}
        self.parts.save(gene, identity, arrays)
        self.finished[gene] = (identity, arrays)

    def from_output(self, gene: str, checkpoint_sha256: str, features: list[str], out: Path) -> None:
        """A gene whose per-cell output of this very run exists: its sums read back from the file."""
        moments = GroupMoments.zeros(len(self.order), len(features))
        if format_of(out).has_names:
            for start, attr, _ in iter_rows(read_header(out), 65536):
                moments.add(self.codes[start : start + len(attr)], np.asarray(attr, dtype=np.float32))
        else:
            values = np.load(out, mmap_mode="r")
            for a in range(0, len(values), 65536):
                moments.add(self.codes[a : a + 65536], np.asarray(values[a : a + 65536], dtype=np.float32))
        self.finish(gene, checkpoint_sha256, features, moments)

    def write(self, genes: list[str]) -> Summary | None:
        """Write the table: this job's genes in order, then those of an earlier run of it that it did not name;
        None when no gene has rows. The finished sums are then removed."""
        tables, written, missing = [], {}, {}
        for gene in list(dict.fromkeys(genes)) + [g for g in self.existing if g not in genes]:
            if gene in self.finished:
                identity, arrays = self.finished[gene]
                stats = GroupMoments.from_arrays(arrays).stats(gene, [str(f) for f in arrays["features"]],
                                                               self.order, self.target)
                if stats.n_missing:
                    missing[gene] = stats.n_missing
                tables.append(gene_table(stats, self.groupby, self.top, self.order if self.groupby else None))
                written[gene] = identity["checkpoint_sha256"]
            elif gene in self.existing:
                tables.append(self.existing[gene])
                written[gene] = self.known[gene]
        if not tables:
            return None
        table = pd.concat(tables, ignore_index=True)
        empty = []
        if self.groupby is not None:
            table[self.groupby] = pd.Categorical(table[self.groupby], categories=self.order)
            seen = set(table[self.groupby].dropna().unique())
            empty = [g for g in self.order if g not in seen]
        summary = Summary(table, self.groupby, list(written), missing, {}, empty, self.target, self.top)
        write_with_identity(summary, self.path, {**self.meta, "genes": written})
        self.parts.discard()
        return summary

    def _read_existing(self) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """The rows per gene of an existing table of this very run, and the genes' checkpoint sha256."""
        if not self.path.exists():
            return {}, {}
        stored = read_sidecar(self.path)
        differ = next((k for k in SHARED if stored.get(k) != self.meta.get(k)), None)
        if differ == "job":  # named as for a per-cell output of another run
            theirs_id, ours_id = (RunIdentity.from_attrs({**job, "gene": "", "checkpoint_sha256": ""}, self.path)
                                  for job in (stored.get("job") or {}, self.meta["job"]))
            differ, theirs, mine = theirs_id.first_difference(ours_id) or ("run identity", "", "")
        elif differ is not None:
            theirs, mine = stored.get(differ), self.meta.get(differ)
        if differ is not None:
            raise UserError(f"holds the summary of another run: its {differ} is {_shown(theirs)}, this run's "
                            f"{_shown(mine)}; pass --overwrite to replace it, or write another --summary", self.path)
        table = read_table(self.path, self.groupby, self.order)
        rows = {str(g): t.reset_index(drop=True) for g, t in table.groupby("gene", sort=False)}
        known = {g: str(s) for g, s in stored.get("genes", {}).items() if g in rows}
        return {g: rows[g] for g in known}, known


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _shown(value) -> str:
    text = str(value) if value not in ("", None) else "none"
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def read_sidecar(path: Path) -> dict:
    """The identity recorded beside a summary written by ``run-many --summary`` (or its ``merge``)."""
    sidecar = identity_sidecar(path)
    try:
        stored = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"records no run identity (its {sidecar.name} is missing or unreadable: not written by "
                        f"run-many --summary); pass --overwrite to replace it", path) from exc
    if not isinstance(stored, dict) or stored.get("encoding-type") != ENCODING_TYPES["summary"]:
        raise UserError(f"its identity sidecar {sidecar.name} is not a summary's", path)
    return stored


def read_table(path: Path, groupby: str | None, order: list) -> pd.DataFrame:
    """A summary written by this tool, its group column mapped back onto ``order`` (labels compared as text)."""
    summary = tables_io.read_summary([path], "summarize")
    if summary.groupby != groupby:
        raise UserError(f"is grouped by {summary.groupby!r}, not {groupby!r}", path)
    table = summary.table
    if groupby is not None:
        by_text = {str(g): g for g in order}
        table[groupby] = pd.Categorical([by_text.get(str(v)) for v in table[groupby].astype(object)],
                                        categories=order)
    return table


def write_with_identity(summary: Summary, path: Path, identity: dict) -> None:
    """The table, then its identity sidecar, each moved into place atomically (a failed table leaves neither)."""
    with atomic_output(identity_sidecar(path)) as tmp:
        tmp.write_text(json.dumps(identity, sort_keys=True, default=plain_value))
        tables_io.write_summary(summary, path)


def merge_summaries(paths: list[Path], out: Path, overwrite: bool = False) -> int:
    """Join the summary tables of a sharded ``run-many --summary`` into ``out``, after checking they are every
    shard once and of one run; the number of genes."""
    check_summary_path(out)
    tables_io.check_table_output(out, overwrite, paths, h5ad=True)
    parts = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError("summary not found", p)
        parts.append((Path(p), read_sidecar(Path(p))))
    first_path, first = parts[0]
    count = int(first.get("shard_count", 1))
    by_index: dict[int, tuple[Path, dict]] = {}
    for p, meta in parts:
        differ = next((k for k in (*SHARED, "shard_count") if meta.get(k) != first.get(k)), None)
        if differ is not None:
            raise UserError(f"foreign shard: its {differ} differs from {first_path.name}'s", p)
        k = int(meta.get("shard_index", 0))
        if k in by_index:
            raise UserError(f"shard {k}/{count} given twice (also {by_index[k][0]})", p)
        by_index[k] = (p, meta)
    missing = [k for k in range(count) if k not in by_index]
    if missing:
        raise UserError(f"missing shard(s) {', '.join(f'{k}/{count}' for k in missing[:10])} of {count}", first_path)
    groupby = first["groupby"] or None
    order = list(first["groups"]) if groupby else [None]
    tables, genes = [], {}
    for k in range(count):
        p, meta = by_index[k]
        for gene in meta.get("genes", {}):
            if gene in genes:
                raise UserError(f"gene {gene!r} is also in {genes[gene][0]}", p)
            genes[gene] = (p, meta["genes"][gene])
        tables.append(read_table(p, groupby, order))
    table = pd.concat(tables, ignore_index=True)
    if groupby is not None:
        table[groupby] = pd.Categorical(table[groupby], categories=order)
    top = int(first.get("top", 0)) or None
    summary = Summary(table, groupby, list(genes), target=str(first["target"]), n_top=top)
    identity = {**{k: first[k] for k in first if k != "genes"}, "shard_index": 0, "shard_count": 1,
                "merged_from": count, "genes": {g: sha for g, (_, sha) in genes.items()}}
    write_with_identity(summary, out, identity)
    return len(genes)


def is_summary_file(path: str | Path) -> bool:
    """Whether ``path`` names a summary table or summary AnnData (what ``merge`` joins as tables)."""
    from ..io.reader import declared_kind

    if tables_io.is_table(path):
        return True
    return tables_io.is_h5ad(path) and Path(path).is_file() and declared_kind(path) == "summary"

