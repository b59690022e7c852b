"""What every gene of a job reads from one data file, derived once and handed to each gene explicitly.

A job (``run``, ``run-many``, a notebook model) builds one :class:`DataIndex` over its store. The gene views
(:func:`~cell2net_attr.data.gene_view.load_gene_data`) take their shared parts from it: the cell names, each
modality's row map and var names, the ``peak_to_gene`` and ``gene_tf`` tables indexed by gene, the peak
sequences, the covariate matrices and the ``obs`` table. Each part is read on first use and kept for the life
of the index (of the job), never in the store.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ..errors import UserError
from .covariates import covariate_matrix
from .store import CellNames, H5Store, Store, file_sha256


class GeneTable:
    """A table with one or more rows per gene, and each gene's row positions (found once per job)."""

    def __init__(self, table: pd.DataFrame, genes: np.ndarray) -> None:
        self.table = table
        codes, uniq = pd.factorize(genes)  # hashing: several times faster than sorting the names
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes, minlength=len(uniq)))[:-1]
        rows = dict(zip(uniq.tolist(), np.split(order, bounds)))
        self.rows_of: dict[str, np.ndarray] = {gene: rows[gene] for gene in sorted(rows)}  # in name order

    def rows(self, gene: str) -> np.ndarray | None:
        """The positions of ``gene``'s rows, ascending; ``None`` when it has none."""
        return self.rows_of.get(gene)


class DataIndex:
    """The parts of one data file that every gene of a job shares.

    Parameters
    ----------
    store
        The open data file (or in-memory MuData) of the job; the index never closes it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.names: CellNames = store.cell_names("obs")
        self._var: dict[str, pd.Index] = {}
        self._row_maps: dict[str, np.ndarray | None] = {}
        self._gene_tf: dict[str, GeneTable] = {}
        self._sequences: dict[str, tuple[pd.Series, set[str]] | None] = {}
        self._covariates: dict[tuple[str, ...], np.ndarray] = {}
        self._has: dict[str, bool] = {}

    def has(self, key: str) -> bool:
        """Whether the store has element ``key`` (asked of the file once per job: every gene asks the same)."""
        if key not in self._has:
            self._has[key] = self.store.has(key)
        return self._has[key]

    @property
    def source(self) -> str:
        """The file (or object) the index reads."""
        return self.store.source

    @functools.cached_property
    def sha256(self) -> str:
        """The data file's sha256 (part of a run's identity); empty for an in-memory MuData."""
        return file_sha256(self.store.path) if isinstance(self.store, H5Store) else ""

    @functools.cached_property
    def peak_to_gene(self) -> GeneTable:
        """The validated ``uns['peak_to_gene']`` table, indexed by gene."""
        src = self.source
        if not self.has("uns/peak_to_gene"):
            raise UserError("no mdata.uns['peak_to_gene']", src)
        p2g = self.store.read("uns/peak_to_gene")
        if not isinstance(p2g, pd.DataFrame):
            raise UserError("mdata.uns['peak_to_gene'] is not a table", src)
        missing = [c for c in ("gene", "peak", "distance") if c not in p2g.columns]
        if missing:
            raise UserError(f"mdata.uns['peak_to_gene'] lacks column(s) {missing}", src)
        return GeneTable(p2g, p2g["gene"].astype(str).to_numpy())

    def gene_tf(self, rna_mod: str) -> GeneTable:
        """``rna.uns['gene_tf']`` indexed by gene (its row names)."""
        if rna_mod not in self._gene_tf:
            key = f"mod/{rna_mod}/uns/gene_tf"
            if not self.has(key):
                raise UserError(f"neither a per-gene file (rna.obsm['tf'] + uns['tfs']) nor a full one "
                                f"({rna_mod}.uns['gene_tf'])", self.source)
            table = self.store.numeric_frame(key)  # a genes x TFs matrix of 0/1: one read per column
            if table is None:
                table = self.store.read(key)
            if not isinstance(table, pd.DataFrame):
                raise UserError(f"{rna_mod}.uns['gene_tf'] is not a table", self.source)
            self._gene_tf[rna_mod] = GeneTable(table, table.index.astype(str).to_numpy())
        return self._gene_tf[rna_mod]

    @functools.cached_property
    def per_gene_tfs(self) -> list[str]:
        """``mdata.uns['tfs']`` of a per-gene file."""
        return [str(t) for t in np.atleast_1d(self.store.read("uns/tfs"))]

    def var_names(self, mod: str) -> pd.Index:
        """The var names of modality ``mod``."""
        if mod not in self._var:
            self._var[mod] = self.store.index(f"mod/{mod}/var")
        return self._var[mod]

    def row_map(self, mod: str) -> np.ndarray | None:
        """Rows of modality ``mod`` for each global cell; ``None`` when they are in the same order.

        The common case (same cells, same order) is confirmed by comparing names slice by slice, in
        bounded memory. MuData's ``obsmap`` is not used: files edited after writing can carry a stale one.
        """
        if mod not in self._row_maps:
            self._row_maps[mod] = _row_map(self.store, mod, self.names)
        return self._row_maps[mod]

    def sequences(self, atac_mod: str) -> tuple[pd.Series, set[str]] | None:
        """``atac.uns['peaks']['sequence']`` by peak name (first of repeated names) and the repeated names;
        ``None`` when the file has no such table."""
        if atac_mod not in self._sequences:
            key = f"mod/{atac_mod}/uns/peaks"
            table = self.store.read(key) if self.has(key) else None
            self._sequences[atac_mod] = _sequence_lookup(table)  # None too: an older save is looked at once
        return self._sequences[atac_mod]

    def covariates(self, names: list[str]) -> np.ndarray:
        """The named obs columns as a (cells, covariates) float32 matrix (see :func:`covariate_matrix`)."""
        key = tuple(names)
        if key not in self._covariates:
            self._covariates[key] = covariate_matrix(self.store, list(names), len(self.names))
        return self._covariates[key]

    @functools.cached_property
    def obs_table(self) -> pd.DataFrame:
        """The global ``obs`` (for AnnData outputs)."""
        table = self.store.read("obs")
        if not isinstance(table, pd.DataFrame):
            raise UserError("obs is not a table", self.source)
        return table


def _row_map(store: Store, mod: str, obs_names: CellNames) -> np.ndarray | None:
    if store.index_matches(f"mod/{mod}/obs", obs_names):
        return None
    mod_names = store.index(f"mod/{mod}/obs")
    if not mod_names.is_unique:
        dup = mod_names[mod_names.duplicated()].unique()
        raise UserError(f"modality '{mod}' names cell(s) {list(dup[:3])} more than once", store.source)
    pos = mod_names.get_indexer(obs_names.index)
    if (pos < 0).any():
        absent = [n for n, p in zip(obs_names.index, pos) if p < 0]
        raise UserError(f"cell(s) {absent[:3]} of obs are missing from modality '{mod}'", store.source)
    return pos.astype(np.int64)


def _sequence_lookup(table) -> tuple[pd.Series, set[str]] | None:
    """The ``sequence`` column of ``uns['peaks']`` by peak name (first of repeated names) and the repeated names;
    None when ``table`` is not a table with that column."""
    if not isinstance(table, pd.DataFrame) or "sequence" not in table.columns:
        return None
    index = table.index.astype(str)
    first = ~index.duplicated()
    return pd.Series(table["sequence"].to_numpy()[first], index=index[first]), set(index[index.duplicated()])
