"""The per-gene view of a MuData: what one Cell2Net model reads, exactly as upstream 0.13 builds it.

Two layouts are accepted:

* **per-gene** (``Cell2Net.save(save_mdata=True)``): ``rna.obsm["tf"]`` holds the TF counts in
  the order of ``mdata.uns["tfs"]``; ``atac`` holds the gene's peaks;
* **full** (the multi-gene file the models were built from): peaks are the gene's rows of
  ``mdata.uns["peak_to_gene"]`` in order; TFs are the nonzero entries of the gene's row of
  ``rna.uns["gene_tf"]`` in column order, read from ``rna.layers["counts"]``.

Small per-gene arrays (sequences, distances, covariates) are read once; accessibility and TF
counts are read by rows, batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..errors import UserError
from .covariates import covariate_matrix, suggest
from .rows import MatrixInput, SharedRows
from .sequence import one_hot_all
from .store import CellNames, H5Store, MemoryStore, Store

DISTANCE_SCALE = 500_000.0


class ModelSizes(Protocol):
    """What the data must match: the sizes a checkpoint declares (a model's ``ModelSpec`` has them)."""

    n_peaks: int
    peak_len: int
    n_tfs: int
    n_covariates: int


@dataclass
class Batch:
    """Per-cell inputs of one batch, float32, rows in the requested order."""

    peak_acc: np.ndarray
    tf_exp: np.ndarray
    covariates: np.ndarray


@dataclass
class GeneData:
    """One gene's inputs: shared arrays in memory, per-cell matrices read on demand."""

    store: Store
    gene: str
    layout: str
    names: CellNames
    peaks: list[str]
    tfs: list[str]
    covariates: list[str]
    peak_seq: np.ndarray
    peak_dist: np.ndarray
    acc_input: MatrixInput
    tf_input: MatrixInput
    _cov: np.ndarray = field(repr=False)
    rna_mod: str = "rna"
    atac_mod: str = "atac"
    _reader: SharedRows | None = field(default=None, repr=False)

    @property
    def n_cells(self) -> int:
        """Number of cells (rows of the global ``obs``)."""
        return len(self.names)

    @property
    def obs_names(self) -> pd.Index:
        """All cell names (read on first use: a run over all cells never needs them whole)."""
        return self.names.index

    @property
    def source(self) -> str:
        """The file (or object) this view reads from."""
        return self.store.source

    def batch(self, rows: np.ndarray) -> Batch:
        """Read the per-cell inputs of ``rows`` (positions into ``obs_names``)."""
        if self._reader is None:
            self._reader = SharedRows([self])
        return self._reader.read(rows)[0]

    def covariate_rows(self, rows: np.ndarray) -> np.ndarray:
        """The covariates of ``rows``, (rows, covariates) float32."""
        return self._cov[rows]

    def obs_table(self, rows: np.ndarray) -> pd.DataFrame:
        """The global ``obs`` of ``rows`` (for AnnData output)."""
        table = self.store.read("obs")
        if not isinstance(table, pd.DataFrame):
            raise UserError("obs is not a table", self.source)
        return table.iloc[np.asarray(rows)].copy()

    def close(self) -> None:
        """Release the underlying file."""
        self.store.close()


def cell_names(store: Store) -> CellNames:
    """The global ``obs`` names of ``store``, read on demand and shared by every gene of a job."""
    return store.memo("obs names", lambda: store.cell_names("obs"))


def open_store(data: str | Path | object, locking: bool | None = None) -> Store:
    """A store over an ``.h5mu`` path or an in-memory MuData (an open store is returned as is)."""
    if isinstance(data, (H5Store, MemoryStore)):
        return data
    if isinstance(data, (str, Path)):
        return H5Store(data, locking=locking)
    if hasattr(data, "mod") and hasattr(data, "obs"):
        return MemoryStore(data)
    raise UserError(f"data must be an .h5mu path or a MuData object, got {type(data).__name__}")


def load_gene_data(
    store: Store,
    gene: str,
    spec: ModelSizes,
    covariates: list[str] | None,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
) -> GeneData:
    """Build and validate the per-gene view against a checkpoint's sizes.

    Every mismatch (peaks, TFs, covariates, sequence length) is a :class:`UserError`
    raised before any computation.
    """
    src = store.source
    for mod in (rna_mod, atac_mod):
        if not store.has(f"mod/{mod}"):
            raise UserError(f"no modality '{mod}' (use --rna-mod/--atac-mod)", src)
    obs_names = cell_names(store)
    if len(obs_names) == 0:
        raise UserError("the data has zero cells", src)

    p2g = _gene_peaks(store, gene)
    peaks = [str(p) for p in p2g["peak"]]
    has_obsm_tf, has_tfs = store.has(f"mod/{rna_mod}/obsm/tf"), store.has("uns/tfs")
    if has_obsm_tf != has_tfs:  # half of a per-gene file: say which half is missing
        obsm_tf, uns_tfs = f"{rna_mod}.obsm['tf']", "mdata.uns['tfs']"
        have, lack = (obsm_tf, uns_tfs) if has_obsm_tf else (uns_tfs, obsm_tf)
        raise UserError(f"per-gene file has {have} but no {lack}", src)
    layout = "per-gene" if has_obsm_tf and has_tfs else "full"
    if layout == "per-gene":
        tfs = [str(t) for t in np.atleast_1d(store.read("uns/tfs"))]
        tf_key, tf_cols = f"mod/{rna_mod}/obsm/tf", None
        width = store.shape(tf_key)[1]
        if width != len(tfs):
            raise UserError(f"rna.obsm['tf'] has {width} columns but uns['tfs'] names {len(tfs)} TFs", src)
    else:
        tfs = _gene_tfs(store, gene, rna_mod)
        tf_key = f"mod/{rna_mod}/layers/counts"
        tf_cols = _columns(store, f"mod/{rna_mod}/var", tfs, "TF", f"{rna_mod}.var_names")

    _check_counts(spec, gene, peaks, tfs, covariates, src)
    acc_key = f"mod/{atac_mod}/layers/counts"
    if not store.has(acc_key):
        raise UserError(f"no '{atac_mod}.layers[\"counts\"]'", src)
    if layout == "full" and not store.has(tf_key):
        raise UserError(f"no '{rna_mod}.layers[\"counts\"]'", src)
    acc_cols = _columns(store, f"mod/{atac_mod}/var", peaks, "peak", f"{atac_mod}.var_names")

    seqs = _sequences(store, peaks, atac_mod)
    peak_seq = one_hot_all(seqs, peaks, spec.peak_len, src)
    distance = np.asarray(pd.to_numeric(p2g["distance"], errors="coerce"), dtype=np.float64)
    if not np.all(np.isfinite(distance)):
        bad = peaks[int(np.argmax(~np.isfinite(distance)))]
        raise UserError(f"uns['peak_to_gene'] distance of peak '{bad}' is not a finite number", src)
    peak_dist = np.exp(-distance.astype(np.float32) / DISTANCE_SCALE).astype(np.float32)

    cov = store.memo(("covariates", tuple(covariates or [])),
                     lambda: covariate_matrix(store, covariates or [], len(obs_names)))
    return GeneData(
        store=store,
        gene=gene,
        layout=layout,
        names=obs_names,
        peaks=peaks,
        tfs=tfs,
        covariates=list(covariates or []),
        peak_seq=peak_seq,
        peak_dist=peak_dist,
        acc_input=MatrixInput(acc_key, _shared_row_map(store, atac_mod, obs_names), acc_cols),
        tf_input=MatrixInput(tf_key, _shared_row_map(store, rna_mod, obs_names), tf_cols),
        _cov=cov,
        rna_mod=rna_mod,
        atac_mod=atac_mod,
    )


def _gene_peaks(store: Store, gene: str) -> pd.DataFrame:
    """The gene's rows of ``uns['peak_to_gene']``, in file order (found through an index built once per job)."""
    p2g, rows_of = store.memo("peak_to_gene by gene", lambda: _peak_to_gene_index(store))
    rows = rows_of.get(gene)
    if rows is None:
        raise UserError(f"gene '{gene}' has no rows in uns['peak_to_gene']{suggest(gene, list(rows_of))}",
                        store.source)
    return p2g.iloc[rows].reset_index(drop=True)


def _peak_to_gene_index(store: Store) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The validated ``peak_to_gene`` table and each gene's row positions."""
    src = store.source
    if not store.has("uns/peak_to_gene"):
        raise UserError("no mdata.uns['peak_to_gene']", src)
    p2g = store.read("uns/peak_to_gene")
    if not isinstance(p2g, pd.DataFrame):
        raise UserError("mdata.uns['peak_to_gene'] is not a table", src)
    missing = [c for c in ("gene", "peak", "distance") if c not in p2g.columns]
    if missing:
        raise UserError(f"mdata.uns['peak_to_gene'] lacks column(s) {missing}", src)
    return p2g, _positions_by_name(p2g["gene"].astype(str).to_numpy())


def _positions_by_name(names: np.ndarray) -> dict[str, np.ndarray]:
    """Each distinct name's positions in ``names``, ascending."""
    uniq, inverse = np.unique(names, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
    return dict(zip(uniq.tolist(), np.split(order, bounds)))


def _gene_tfs(store: Store, gene: str, rna_mod: str) -> list[str]:
    """The TFs of ``gene``'s row of ``rna.uns['gene_tf']`` (its nonzero columns, in column order)."""
    table, rows_of = store.memo(("gene_tf by gene", rna_mod), lambda: _gene_tf_index(store, rna_mod))
    rows = rows_of.get(gene)
    if rows is None:
        raise UserError(f"gene '{gene}' is not a row of {rna_mod}.uns['gene_tf']{suggest(gene, list(rows_of))}",
                        store.source)
    if len(rows) > 1:
        raise UserError(f"gene '{gene}' appears more than once in {rna_mod}.uns['gene_tf']", store.source)
    row = table.iloc[int(rows[0])]
    return [str(c) for c in row.index[np.asarray(row.to_numpy() != 0, dtype=bool)]]


def _gene_tf_index(store: Store, rna_mod: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The ``gene_tf`` table and each gene's row positions."""
    key = f"mod/{rna_mod}/uns/gene_tf"
    if not store.has(key):
        raise UserError(f"neither a per-gene file (rna.obsm['tf'] + uns['tfs']) nor a full one ({rna_mod}.uns['gene_tf'])",
                        store.source)
    table = store.read(key)
    if not isinstance(table, pd.DataFrame):
        raise UserError(f"{rna_mod}.uns['gene_tf'] is not a table", store.source)
    return table, _positions_by_name(table.index.astype(str).to_numpy())


def _check_counts(spec: ModelSizes, gene: str, peaks: list, tfs: list, covariates: list | None, src: str) -> None:
    if len(peaks) != spec.n_peaks:
        raise UserError(f"gene '{gene}' has {len(peaks)} peaks in the data but the checkpoint expects "
                        f"{spec.n_peaks}", src)
    if len(tfs) != spec.n_tfs:
        raise UserError(f"gene '{gene}' has {len(tfs)} TFs in the data but the checkpoint expects {spec.n_tfs}", src)
    n_cov = len(covariates or [])
    if n_cov != spec.n_covariates:
        raise UserError(f"{n_cov} covariate(s) given but the checkpoint expects {spec.n_covariates}", param="covariates")


def _columns(store: Store, var_key: str, names: list[str], what: str, where: str) -> np.ndarray:
    var_names = store.index(var_key)
    if not var_names.is_unique:  # duplicates elsewhere are harmless; among ours they are ambiguous
        clash = sorted(set(var_names[var_names.duplicated()]) & set(names))
        if clash:
            raise UserError(f"{what}(s) {clash[:5]} appear more than once in {where}", store.source)
        first = np.flatnonzero(~var_names.duplicated())
        pos = var_names[first].get_indexer(names)
        pos = np.where(pos < 0, -1, first[np.maximum(pos, 0)])
    else:
        pos = var_names.get_indexer(names)
    if (pos < 0).any():
        absent = [n for n, p in zip(names, pos) if p < 0]
        raise UserError(f"{what}(s) {absent[:5]} not found in {where}", store.source)
    return pos.astype(np.int64)


def _sequences(store: Store, peaks: list[str], atac_mod: str) -> list[str]:
    key = f"mod/{atac_mod}/uns/peaks"
    if store.has(key):
        table = store.read(key)
        if isinstance(table, pd.DataFrame) and "sequence" in table.columns:
            seqs, repeated = store.memo(("sequences", key), lambda: _sequence_lookup(table))
            pos = seqs.index.get_indexer(peaks)
            if (pos < 0).any():
                absent = [p for p, i in zip(peaks, pos) if i < 0]
                raise UserError(f"peak(s) {absent[:5]} have no row in {atac_mod}.uns['peaks']", store.source)
            clash = sorted(repeated & set(peaks))
            if clash:
                raise UserError(f"peak(s) {clash[:5]} have more than one row in {atac_mod}.uns['peaks']",
                                store.source)
            return [str(s) if isinstance(s, str) else s for s in seqs.to_numpy()[pos]]
    var_key = f"mod/{atac_mod}/var"
    if "dna_sequence" in store.columns(var_key):
        names = store.index(var_key)
        values = pd.Series(np.asarray(store.column(var_key, "dna_sequence"), dtype=object), index=names)
        return values[~values.index.duplicated()].loc[peaks].tolist()
    raise UserError(f"no peak sequences: neither {atac_mod}.uns['peaks']['sequence'] "
                    f"nor {atac_mod}.var['dna_sequence']", store.source)


def _sequence_lookup(table: pd.DataFrame) -> tuple[pd.Series, set[str]]:
    """The sequence column by peak name (first of repeated names) and the repeated names, once per file."""
    index = table.index.astype(str)
    repeated = set(index[index.duplicated()])
    first = ~index.duplicated()
    return pd.Series(table["sequence"].to_numpy()[first], index=index[first]), repeated


def _shared_row_map(store: Store, mod: str, obs_names: CellNames) -> np.ndarray | None:
    """The row map of a modality, derived once per store (every gene of a job shares it)."""
    return store.memo(("row map", mod), lambda: _row_map(store, mod, obs_names))


def _row_map(store: Store, mod: str, obs_names: CellNames) -> np.ndarray | None:
    """Rows of a modality for each global cell; ``None`` when they are the same order.

    The common case (same cells, same order) is confirmed by comparing names slice by slice, in
    bounded memory. MuData's ``obsmap`` is not used: files edited after writing can carry a stale one.
    """
    if store.index_matches(f"mod/{mod}/obs", obs_names):
        return None
    mod_names = store.index(f"mod/{mod}/obs", cache=False)
    if not mod_names.is_unique:
        dup = mod_names[mod_names.duplicated()].unique()
        raise UserError(f"modality '{mod}' names cell(s) {list(dup[:3])} more than once", store.source)
    pos = mod_names.get_indexer(obs_names.index)
    if (pos < 0).any():
        absent = [n for n, p in zip(obs_names.index, pos) if p < 0]
        raise UserError(f"cell(s) {absent[:3]} of obs are missing from modality '{mod}'", store.source)
    return pos.astype(np.int64)
