"""Downstream tables from attribution files: upstream's ``tf_to_gene`` and ``get_top_tfs``, for many genes.

Definitions (those of cell2net 0.13's interpretation module, written anew here):

* **summary** (``tf_to_gene``): for each gene, group and TF, ``mean_attr`` and ``std_attr`` (population
  standard deviation, ddof 0) of the attributions over the cells of the group; columns ``tf``, ``gene``,
  ``<groupby>``, ``mean_attr``, ``std_attr``, then ``n_cells`` (cells of the group in the file) and
  ``frac_pos`` (fraction of them with a positive attribution). With ``n_tfs``, only the ``n_tfs`` TFs
  of largest ``mean_attr`` per gene and group, in descending order; otherwise every TF in the file's order.
* **activity**: TF x group, the sum of ``mean_attr`` over genes (a TF absent from a gene's table counts 0).
* **top variable TFs** (``get_top_tfs``): rank TFs by their variance across groups (ddof 1), keep the first
  ``int(n_tfs * var_cutoff)``, z-score each TF across groups (ddof 1) and list the ``n_top`` TFs of
  highest z-score per group.

Decisions: cells are matched to ``obs`` rows by name; cells whose group is missing (NaN) are left out and
counted; a categorical column's groups follow its category order, any other column's its sorted unique
values (as ``np.unique`` does upstream); groups without cells give no rows; TFs of equal mean keep the file's
TF order, TFs of equal z-score the order by variance (then first appearance over genes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..io.reader import Attributions, read_attributions
from .groups import Groups, read_groups

#: Columns of a summary table besides the group column.
SUMMARY_COLUMNS = ("tf", "gene", "mean_attr", "std_attr", "n_cells", "frac_pos")


@dataclass
class GeneStats:
    """Per-group statistics of one gene's attributions (groups with at least one cell)."""

    gene: str
    tfs: list[str]
    groups: list  # labels, in order
    n_cells: np.ndarray  # (G,)
    mean: np.ndarray  # (G, T) float64
    std: np.ndarray  # (G, T) float64, ddof 0
    n_pos: np.ndarray  # (G, T) cells with attribution > 0
    n_missing: int = 0  # cells left out because their group is missing
    shard: tuple[int, int] | None = None


def gene_stats(attr: Attributions, groups: Groups | None) -> GeneStats:
    """Mean, std (ddof 0) and positive count per group and TF; ``groups=None`` = all cells as one group."""
    if groups is None:
        codes, labels = np.zeros(len(attr.obs_names), dtype=np.int64), [None]
    else:
        codes, labels = groups.codes_for(attr.obs_names, attr.path), groups.order
    kept = codes >= 0
    n_missing = int((~kept).sum())
    order = np.argsort(codes[kept], kind="stable")
    x = attr.values[kept][order]
    counts = np.bincount(codes[kept], minlength=len(labels))
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]]).astype(np.int64)
    t = len(attr.tf_names)
    if len(present) == 0:
        empty = np.zeros((0, t))
        return GeneStats(attr.gene, attr.tf_names, [], np.zeros(0, np.int64), empty, empty,
                         np.zeros((0, t), np.int64), n_missing, attr.shard)
    n = counts[present]
    mean = np.add.reduceat(x, starts, axis=0, dtype=np.float64) / n[:, None]
    dev = x - np.repeat(mean, n, axis=0)
    std = np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / n[:, None])
    n_pos = np.add.reduceat((x > 0).astype(np.int64), starts, axis=0)
    return GeneStats(attr.gene, attr.tf_names, [labels[i] for i in present], n.astype(np.int64), mean, std,
                     n_pos, n_missing, attr.shard)


def top_order(values: np.ndarray, n: int | None) -> np.ndarray:
    """Positions of the ``n`` largest values, largest first, ties in their original order (all when ``None``)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return order if n is None else order[:n]


def tf_to_gene(stats: GeneStats, groupby: str | None = None, n_tfs: int | None = None,
               group_order: list | None = None) -> pd.DataFrame:
    """Upstream's ``tf_to_gene`` table for one gene (see the module docstring).

    ``groupby=None`` gives the whole-population table (no group column). ``group_order`` (all groups of
    the column) makes the group column categorical in that order, so tables of many genes agree.
    """
    blocks = []
    tfs = np.asarray(stats.tfs, dtype=object)
    for g, label in enumerate(stats.groups):
        pick = np.arange(len(tfs)) if n_tfs is None else top_order(stats.mean[g], n_tfs)
        block = {"tf": tfs[pick], "gene": stats.gene}
        if groupby is not None:
            block[groupby] = [label] * len(pick)
        block.update(mean_attr=stats.mean[g, pick], std_attr=stats.std[g, pick],
                     n_cells=int(stats.n_cells[g]), frac_pos=stats.n_pos[g, pick] / stats.n_cells[g])
        blocks.append(pd.DataFrame(block))
    columns = ["tf", "gene", *([groupby] if groupby is not None else []), *SUMMARY_COLUMNS[2:]]
    table = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    if groupby is not None:
        order = group_order if group_order is not None else list(stats.groups)
        table[groupby] = pd.Categorical(table[groupby], categories=order)
    return table[columns]


@dataclass
class Summary:
    """The concatenated ``tf_to_gene`` tables of many genes, with what was left out."""

    table: pd.DataFrame
    groupby: str | None
    genes: list[str]
    missing: dict[str, int] = field(default_factory=dict)  # gene -> cells with a missing group
    shards: dict[str, tuple[int, int]] = field(default_factory=dict)  # gene -> (index, count) of partial files
    empty_groups: list = field(default_factory=list)  # groups of the column with no cell in any file

    def notes(self) -> list[str]:
        """One-line remarks for the log (cells left out, partial shard files)."""
        out = []
        if self.missing:
            counts = set(self.missing.values())
            if len(counts) == 1 and len(self.missing) == len(self.genes):
                out.append(f"{counts.pop()} cell(s) with no {self.groupby!r} value (NaN) left out of every gene")
            else:
                listed = ", ".join(f"{g} {n}" for g, n in list(self.missing.items())[:5])
                more = f" and {len(self.missing) - 5} more genes" if len(self.missing) > 5 else ""
                out.append(f"cells with no {self.groupby!r} value (NaN) left out: {listed}{more}")
        if self.empty_groups:
            listed = ", ".join(map(str, self.empty_groups[:10]))
            out.append(f"group(s) {listed} of {self.groupby!r} have no cells in the attribution files (no rows)")
        for gene, (k, n) in list(self.shards.items())[:5]:
            out.append(f"{gene}: the file holds shard {k}/{n} only; merge the shards first "
                       f"(cell2net-attr merge) to summarize every cell")
        return out


def summarize(files: Iterable[str | Path], data: str | Path | object | None = None, groupby: str | None = None,
              n_tfs: int | None = None, on_gene: Callable[[int, str], None] | None = None) -> Summary:
    """``tf_to_gene`` for every attribution file, concatenated in the files' order.

    Parameters
    ----------
    files
        HDF5 attribution files (see :func:`collect_attribution_files` for directories and lists).
    data
        The ``.h5mu`` (or MuData) holding the ``groupby`` column; needed only with ``groupby``.
    groupby
        obs column; ``None`` = one table over all cells of each file.
    n_tfs
        Keep the ``n_tfs`` TFs of largest mean attribution per gene and group.
    on_gene
        Called with (position, gene) after each file.
    """
    check_top(n_tfs, "top")
    groups = None
    if groupby is not None:
        if data is None:
            raise UserError("needed with --groupby: the .h5mu whose obs holds the column", param="data")
        groups = read_groups(data, groupby)
    tables, genes, missing, shards = [], {}, {}, {}
    for i, path in enumerate(files):
        attr = read_attributions(path)
        if attr.gene in genes:
            shard = attr.shard or shards.get(attr.gene)
            hint = " (shards of one run: merge them first with cell2net-attr merge)" if shard else ""
            raise UserError(f"gene {attr.gene!r} is also in {genes[attr.gene]}{hint}", path)
        genes[attr.gene] = path
        stats = gene_stats(attr, groups)
        if stats.n_missing:
            missing[attr.gene] = stats.n_missing
        if stats.shard:
            shards[attr.gene] = stats.shard
        tables.append(tf_to_gene(stats, groupby, n_tfs, groups.order if groups else None))
        if on_gene is not None:
            on_gene(i, attr.gene)
    if not tables:
        raise UserError("no attribution files given", "ATTR")
    table = pd.concat(tables, ignore_index=True)
    empty = []
    if groupby is not None:  # concat keeps the categorical only when every table had rows
        table[groupby] = pd.Categorical(table[groupby], categories=groups.order)
        seen = set(table[groupby].dropna().unique())
        empty = [g for g in groups.order if g not in seen]
    return Summary(table, groupby, list(genes), missing, shards, empty)


def limit_per_gene(summary: Summary, n_tfs: int) -> Summary:
    """Keep each gene's ``n_tfs`` TFs of largest ``mean_attr`` per group (largest first, ties in table order)."""
    check_top(n_tfs, "per_gene_top")
    table = summary.table
    keys = [table["gene"]] + ([table[summary.groupby]] if summary.groupby else [])
    order = np.argsort(-table["mean_attr"].to_numpy(dtype=np.float64), kind="stable")
    ranked = table.iloc[order]
    rank = ranked.groupby([k.iloc[order] for k in keys], sort=False, observed=True).cumcount()
    kept = ranked[rank.to_numpy() < n_tfs]
    # back to gene, then group order, the TFs of each largest first
    first = pd.Series(np.arange(len(table)), index=table.index)
    block = kept.groupby([k.loc[kept.index] for k in keys], sort=False, observed=True).ngroup()
    start = first.loc[kept.index].groupby(block.to_numpy()).transform("min")
    kept = kept.iloc[np.lexsort((np.arange(len(kept)), start.to_numpy()))].reset_index(drop=True)
    return Summary(kept, summary.groupby, summary.genes, summary.missing, summary.shards, summary.empty_groups)


def check_top(n: int | None, param: str) -> None:
    """A ``top``-like count (the parameter ``param``) must be a positive integer."""
    if n is not None and n < 1:
        raise UserError(f"must be a positive number of TFs, got {n}", param=param)
