"""The per-gene view of a MuData: what one Cell2Net model reads, exactly as upstream 0.13 builds it.

Two layouts are accepted:

* **per-gene** (``Cell2Net.save(save_mdata=True)``): ``rna.obsm["tf"]`` holds the TF counts in
  the order of ``mdata.uns["tfs"]``; ``atac`` holds the gene's peaks;
* **full** (the multi-gene file the models were built from): peaks are the gene's rows of
  ``mdata.uns["peak_to_gene"]`` in order; TFs are the nonzero entries of the gene's row of
  ``rna.uns["gene_tf"]`` in column order, read from ``rna.layers["counts"]``.

What the genes of a job share comes from its :class:`~cell2net_attr.data.job_index.DataIndex`; small
per-gene arrays (sequences, distances) are read once; accessibility and TF counts are read by rows,
batch by batch (:mod:`cell2net_attr.data.rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from ..errors import UserError, suggest
from .job_index import DataIndex
from .rows import MatrixInput
from .sequence import one_hot_all
from .store import CellNames, Store

DISTANCE_SCALE = 500_000.0


class ModelSizes(Protocol):
    """What the data must match: the sizes a checkpoint declares (a model's ``ModelSpec`` has them)."""

    n_peaks: int
    peak_len: int
    n_tfs: int
    n_covariates: int


@dataclass
class GeneData:
    """One gene's inputs: shared arrays in memory, per-cell matrices read on demand."""

    index: DataIndex
    gene: str
    layout: str
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

    @property
    def store(self) -> Store:
        """The data file (or in-memory MuData) the view reads."""
        return self.index.store

    @property
    def names(self) -> CellNames:
        """The global ``obs`` names, read on demand."""
        return self.index.names

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

    def covariate_rows(self, rows: np.ndarray) -> np.ndarray:
        """The covariates of ``rows``, (rows, covariates) float32."""
        return self._cov[rows]

    def obs_table(self, rows: np.ndarray) -> pd.DataFrame:
        """The global ``obs`` of ``rows`` (for AnnData output)."""
        return self.index.obs_table.iloc[np.asarray(rows)].copy()


def load_gene_data(
    index: DataIndex,
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
    store, src = index.store, index.source
    for mod in (rna_mod, atac_mod):
        if not index.has(f"mod/{mod}"):
            raise UserError(f"no modality '{mod}' (use --rna-mod/--atac-mod)", src)
    if len(index.names) == 0:
        raise UserError("the data has zero cells", src)

    p2g = _gene_peaks(index, gene)
    peaks = [str(p) for p in p2g["peak"]]
    has_obsm_tf, has_tfs = index.has(f"mod/{rna_mod}/obsm/tf"), index.has("uns/tfs")
    if has_obsm_tf != has_tfs:  # half of a per-gene file: say which half is missing
        obsm_tf, uns_tfs = f"{rna_mod}.obsm['tf']", "mdata.uns['tfs']"
        have, lack = (obsm_tf, uns_tfs) if has_obsm_tf else (uns_tfs, obsm_tf)
        raise UserError(f"per-gene file has {have} but no {lack}", src)
    layout = "per-gene" if has_obsm_tf and has_tfs else "full"
    if layout == "per-gene":
        tfs = index.per_gene_tfs
        tf_key, tf_cols = f"mod/{rna_mod}/obsm/tf", None
        width = store.shape(tf_key)[1]
        if width != len(tfs):
            raise UserError(f"rna.obsm['tf'] has {width} columns but uns['tfs'] names {len(tfs)} TFs", src)
    else:
        tfs = _gene_tfs(index, gene, rna_mod)
        tf_key = f"mod/{rna_mod}/layers/counts"
        tf_cols = _columns(index, rna_mod, tfs, "TF")

    _check_counts(spec, gene, peaks, tfs, covariates, src)
    acc_key = f"mod/{atac_mod}/layers/counts"
    if not index.has(acc_key):
        raise UserError(f"no '{atac_mod}.layers[\"counts\"]'", src)
    if layout == "full" and not index.has(tf_key):
        raise UserError(f"no '{rna_mod}.layers[\"counts\"]'", src)
    acc_cols = _columns(index, atac_mod, peaks, "peak")

    seqs = _sequences(index, peaks, atac_mod)
    peak_seq = one_hot_all(seqs, peaks, spec.peak_len, src)
    distance = np.asarray(pd.to_numeric(p2g["distance"], errors="coerce"), dtype=np.float64)
    if not np.all(np.isfinite(distance)):
        bad = peaks[int(np.argmax(~np.isfinite(distance)))]
        raise UserError(f"uns['peak_to_gene'] distance of peak '{bad}' is not a finite number", src)
    peak_dist = np.exp(-distance.astype(np.float32) / DISTANCE_SCALE).astype(np.float32)

    return GeneData(
        index=index,
        gene=gene,
        layout=layout,
        peaks=peaks,
        tfs=list(tfs),
        covariates=list(covariates or []),
        peak_seq=peak_seq,
        peak_dist=peak_dist,
        acc_input=MatrixInput(acc_key, index.row_map(atac_mod), acc_cols),
        tf_input=MatrixInput(tf_key, index.row_map(rna_mod), tf_cols),
        _cov=index.covariates(list(covariates or [])),
        rna_mod=rna_mod,
        atac_mod=atac_mod,
    )


def _gene_peaks(index: DataIndex, gene: str) -> pd.DataFrame:
    """The gene's rows of ``uns['peak_to_gene']``, in file order."""
    p2g = index.peak_to_gene
    rows = p2g.rows(gene)
    if rows is None:
        raise UserError(f"gene '{gene}' has no rows in uns['peak_to_gene']{suggest(gene, list(p2g.rows_of))}",
                        index.source)
    return p2g.table.iloc[rows].reset_index(drop=True)


def _gene_tfs(index: DataIndex, gene: str, rna_mod: str) -> list[str]:
    """The TFs of ``gene``'s row of ``rna.uns['gene_tf']`` (its nonzero columns, in column order)."""
    gene_tf = index.gene_tf(rna_mod)
    rows = gene_tf.rows(gene)
    if rows is None:
        raise UserError(f"gene '{gene}' is not a row of {rna_mod}.uns['gene_tf']"
                        f"{suggest(gene, list(gene_tf.rows_of))}", index.source)
    if len(rows) > 1:
        raise UserError(f"gene '{gene}' appears more than once in {rna_mod}.uns['gene_tf']", index.source)
    row = gene_tf.table.iloc[int(rows[0])]
    return [str(c) for c in row.index[np.asarray(row.to_numpy() != 0, dtype=bool)]]


def _check_counts(spec: ModelSizes, gene: str, peaks: list, tfs: list, covariates: list | None, src: str) -> None:
    if len(peaks) != spec.n_peaks:
        raise UserError(f"gene '{gene}' has {len(peaks)} peaks in the data but the checkpoint expects "
                        f"{spec.n_peaks}", src)
    if len(tfs) != spec.n_tfs:
        raise UserError(f"gene '{gene}' has {len(tfs)} TFs in the data but the checkpoint expects {spec.n_tfs}", src)
    n_cov = len(covariates or [])
    if n_cov != spec.n_covariates:
        raise UserError(f"{n_cov} covariate(s) given but the checkpoint expects {spec.n_covariates}", param="covariates")


def _columns(index: DataIndex, mod: str, names: list[str], what: str) -> np.ndarray:
    var_names = index.var_names(mod)
    where = f"{mod}.var_names"
    if not var_names.is_unique:  # duplicates elsewhere are harmless; among ours they are ambiguous
        clash = sorted(set(var_names[var_names.duplicated()]) & set(names))
        if clash:
            raise UserError(f"{what}(s) {clash[:5]} appear more than once in {where}", index.source)
        first = np.flatnonzero(~var_names.duplicated())
        pos = var_names[first].get_indexer(names)
        pos = np.where(pos < 0, -1, first[np.maximum(pos, 0)])
    else:
        pos = var_names.get_indexer(names)
    if (pos < 0).any():
        absent = [n for n, p in zip(names, pos) if p < 0]
        raise UserError(f"{what}(s) {absent[:5]} not found in {where}", index.source)
    return pos.astype(np.int64)


def _sequences(index: DataIndex, peaks: list[str], atac_mod: str) -> list[str]:
    store = index.store
    lookup = index.sequences(atac_mod)
    if lookup is not None:
        seqs, repeated = lookup
        pos = seqs.index.get_indexer(peaks)
        if (pos < 0).any():
            absent = [p for p, i in zip(peaks, pos) if i < 0]
            raise UserError(f"peak(s) {absent[:5]} have no row in {atac_mod}.uns['peaks']", store.source)
        clash = sorted(repeated & set(peaks))
        if clash:
            raise UserError(f"peak(s) {clash[:5]} have more than one row in {atac_mod}.uns['peaks']", store.source)
        return [str(s) if isinstance(s, str) else s for s in seqs.to_numpy()[pos]]
    var_key = f"mod/{atac_mod}/var"
    if "dna_sequence" in store.columns(var_key):
        names = index.var_names(atac_mod)
        values = pd.Series(np.asarray(store.column(var_key, "dna_sequence"), dtype=object), index=names)
        return values[~values.index.duplicated()].loc[peaks].tolist()
    raise UserError(f"no peak sequences: neither {atac_mod}.uns['peaks']['sequence'] "
                    f"nor {atac_mod}.var['dna_sequence']", store.source)
