"""Per-cell inputs of many genes at once: each block of rows of each matrix is read once for all of them.

A wide atlas holds tens of thousands of peak and gene columns, of which one model reads about a
hundred. Reading the rows once per gene would read the whole matrix once per gene; here a block of
rows is read once, restricted to the union of the genes' columns while still sparse, and each
gene's dense inputs are cut from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from ..errors import UserError
from .store import CellNames, Store


@dataclass
class Batch:
    """Per-cell inputs of one batch, float32, rows in the requested order."""

    peak_acc: np.ndarray
    tf_exp: np.ndarray
    covariates: np.ndarray

    def __len__(self) -> int:
        return len(self.tf_exp)

    def rows(self, part: slice) -> Batch:
        """The batch's rows ``part``."""
        return Batch(self.peak_acc[part], self.tf_exp[part], self.covariates[part])


@dataclass(frozen=True)
class MatrixInput:
    """Columns ``cols`` (``None`` = all) of the matrix ``key``, whose row of global cell ``i`` is
    ``row_map[i]`` (``None``: the same order as the global ``obs``)."""

    key: str
    row_map: np.ndarray | None
    cols: np.ndarray | None


class _Source:
    """One matrix read for several (gene, input) pairs: the union of their columns."""

    def __init__(self, key: str, row_map: np.ndarray | None, wanted: list[np.ndarray | None]) -> None:
        self.key, self.row_map = key, row_map
        if any(c is None for c in wanted):
            self.union, self.positions = None, [c for c in wanted]
        else:
            self.union = np.unique(np.concatenate(wanted)) if wanted else np.empty(0, np.int64)
            self.positions = [np.searchsorted(self.union, c) for c in wanted]

    def read(self, store, rows: np.ndarray) -> list[np.ndarray]:
        """Dense float32 (rows, cols) for every wanted column set, rows in the order given."""
        mapped = rows if self.row_map is None else self.row_map[rows]
        uniq, inverse = np.unique(mapped, return_inverse=True)
        block = store.block(self.key, uniq, self.union)
        if len(uniq) != len(mapped) or not np.array_equal(uniq, mapped):
            block = block[inverse]
        if sp.issparse(block) and len(self.positions) > 1:
            block = block.tocsc()  # cheap column cuts for many genes
        out = []
        for pos in self.positions:
            part = block if pos is None else block[:, pos]
            part = part.toarray() if sp.issparse(part) else np.asarray(part)
            out.append(np.ascontiguousarray(part, dtype=np.float32))
        return out


class RowInputs(Protocol):
    """What :class:`SharedRows` needs of a gene's view (a :class:`~cell2net_attr.data.gene_view.GeneData`)."""

    store: Store
    names: CellNames
    peaks: list[str]
    tfs: list[str]
    acc_input: MatrixInput
    tf_input: MatrixInput
    source: str

    def covariate_rows(self, rows: np.ndarray) -> np.ndarray: ...


class SharedRows:
    """The per-cell inputs (accessibility, TF expression, covariates) of several genes of one data file.

    Parameters
    ----------
    genes
        Gene views of one store; their matrices are grouped by element and row order.
    """

    def __init__(self, genes: Sequence[RowInputs]) -> None:
        if not genes:
            raise ValueError("no genes")
        self.genes = list(genes)
        self.store = genes[0].store
        groups: dict[tuple, list[tuple[int, int, np.ndarray | None]]] = {}
        maps: dict[tuple, np.ndarray | None] = {}
        for g, gene in enumerate(self.genes):
            for slot, inp in enumerate((gene.acc_input, gene.tf_input)):
                ident = (inp.key, None if inp.row_map is None else id(inp.row_map))
                groups.setdefault(ident, []).append((g, slot, inp.cols))
                maps[ident] = inp.row_map
        self._sources = [(_Source(ident[0], maps[ident], [c for _, _, c in members]), members)
                         for ident, members in groups.items()]

    def read(self, rows: np.ndarray, strict: bool = True) -> list[Batch | UserError]:
        """Every gene's inputs for ``rows`` (positions into the global ``obs``), checked to be finite.

        With ``strict`` false, a gene whose inputs are not finite gets its :class:`UserError` in place
        of a batch, so that the other genes go on.
        """
        rows = np.asarray(rows, dtype=np.int64)
        parts: list[list[np.ndarray | None]] = [[None, None] for _ in self.genes]
        for source, members in self._sources:
            for (g, slot, _), block in zip(members, source.read(self.store, rows)):
                parts[g][slot] = block
        batches = []
        for gene, (acc, tf) in zip(self.genes, parts):
            batch = Batch(acc, tf, gene.covariate_rows(rows))
            try:
                check_finite(batch, gene, rows)
            except UserError as exc:
                if strict:
                    raise
                batch = exc
            batches.append(batch)
        return batches


def check_finite(batch: Batch, gene: RowInputs, rows: np.ndarray) -> None:
    """NaN or Inf among a gene's inputs is the data's fault: name the cell and the column."""
    for what, arr, cols in (("accessibility", batch.peak_acc, gene.peaks), ("TF expression", batch.tf_exp, gene.tfs)):
        if not np.isfinite(arr.sum()):  # one reduction in the common case
            bad = ~np.isfinite(arr)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise UserError(f"{what} of cell '{gene.names.take(rows[r:r + 1])[0]}' for '{cols[c]}' is "
                                f"{arr[r, c]}", gene.source)
