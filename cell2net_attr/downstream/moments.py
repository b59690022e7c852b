"""Group statistics accumulated block by block, for a job that makes its summary while it computes.

``summarize`` computes a gene's statistics from its whole attribution file (:func:`~.summary.gene_stats`). A job
that accumulates them as blocks of cells are computed (``run-many --summary``) keeps, per group and feature,
float64 sums instead: the number of cells ``n``, the sum, the sum of squares and the number of positive values.
Sums over blocks, saved chunks or interrupted and resumed runs are the sums over every cell, so each gives the
statistics of the whole: ``mean = sum / n`` and the population std (ddof 0, as upstream)
``sqrt(max(sumsq / n - mean**2, 0))``, then :class:`~.summary.GeneStats` as ``summarize`` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .summary import GeneStats

#: The arrays a :class:`GroupMoments` is saved as (``missing`` as a 0-d array).
ARRAYS = ("n", "total", "squares", "positive", "missing")


@dataclass
class GroupMoments:
    """float64 sums per group (rows) and feature (columns), and the cells left out for a missing group."""

    n: np.ndarray  # (G,) int64: cells per group
    total: np.ndarray  # (G, T) float64: sum of the values
    squares: np.ndarray  # (G, T) float64: sum of their squares
    positive: np.ndarray  # (G, T) int64: values > 0
    missing: int = 0  # cells whose group is missing (code -1)

    @classmethod
    def zeros(cls, n_groups: int, n_features: int) -> GroupMoments:
        """No cells yet."""
        shape = (n_groups, n_features)
        # sums start at -0.0, the identity of addition: a feature whose values are all -0.0 (a TF of zero
        # expression) keeps the mean -0.0 that summarize's sums give it
        return cls(np.zeros(n_groups, np.int64), np.full(shape, -0.0), np.zeros(shape), np.zeros(shape, np.int64))

    def add(self, codes: np.ndarray, values: np.ndarray) -> None:
        """Add the cells of ``values`` (cells x features), cell ``i`` in group ``codes[i]`` (-1: left out)."""
        codes = np.asarray(codes)
        kept = codes >= 0
        self.missing += int(len(codes) - kept.sum())
        if not kept.any():
            return
        x = np.asarray(values, dtype=np.float64)
        if not kept.all():
            codes, x = codes[kept], x[kept]
        if codes.min() == codes.max():  # one group (no --groupby, or a block of one cell type)
            g = int(codes[0])
            self.n[g] += len(codes)
            self.total[g] += np.add.reduceat(x, [0], axis=0)[0]  # as summarize sums (x.sum turns -0.0 into 0.0)
            self.squares[g] += np.einsum("ij,ij->j", x, x)
            self.positive[g] += (x > 0).sum(axis=0)
            return
        order = np.argsort(codes, kind="stable")
        codes, x = codes[order], x[order]
        groups, starts = np.unique(codes, return_index=True)
        self.n[groups] += np.diff(np.append(starts, len(codes)))
        self.total[groups] += np.add.reduceat(x, starts, axis=0)
        self.squares[groups] += np.add.reduceat(x * x, starts, axis=0)
        self.positive[groups] += np.add.reduceat((x > 0).astype(np.int64), starts, axis=0)

    def merge(self, other: GroupMoments) -> None:
        """Add ``other``'s cells (the same groups and features)."""
        if other.total.shape != self.total.shape:
            raise ValueError(f"moments of shape {other.total.shape} cannot join {self.total.shape}")
        self.n += other.n
        self.total += other.total
        self.squares += other.squares
        self.positive += other.positive
        self.missing += other.missing

    def copy(self) -> GroupMoments:
        """An independent copy."""
        return GroupMoments(self.n.copy(), self.total.copy(), self.squares.copy(), self.positive.copy(), self.missing)

    def arrays(self) -> dict[str, np.ndarray]:
        """The sums as named arrays (to save them)."""
        return {"n": self.n, "total": self.total, "squares": self.squares, "positive": self.positive,
                "missing": np.asarray(self.missing, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays) -> GroupMoments:
        """The moments :meth:`arrays` saved (a mapping, or an open ``.npz``)."""
        return cls(np.asarray(arrays["n"], np.int64), np.asarray(arrays["total"], np.float64),
                   np.asarray(arrays["squares"], np.float64), np.asarray(arrays["positive"], np.int64),
                   int(arrays["missing"]))

    def stats(self, gene: str, features: list[str], labels: list, target: str = "tfs") -> GeneStats:
        """The statistics ``summarize`` gives for these cells: groups with at least one cell, in ``labels`` order."""
        present = np.flatnonzero(self.n)
        n = self.n[present]
        mean = self.total[present] / n[:, None]
        var = self.squares[present] / n[:, None] - mean * mean
        std = np.sqrt(np.maximum(var, 0.0))
        return GeneStats(gene, list(features), [labels[i] for i in present], n.astype(np.int64), mean, std,
                         self.positive[present], self.missing, None, target)
