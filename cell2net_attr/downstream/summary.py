"""Downstream tables from attribution files: upstream's ``tf_to_gene``, ``peak_to_gene`` and ``get_top_tfs``,
for many genes.

Definitions (those of cell2net 0.13's interpretation module, written anew here):

* **summary** (``tf_to_gene``): for each gene, group and TF, ``mean_attr`` and ``std_attr`` (population
  standard deviation, ddof 0) of the attributions over the cells of the group; columns ``tf``, ``gene``,
  ``<groupby>``, ``mean_attr``, ``std_attr``, then ``n_cells`` (cells of the group in the file) and
  ``frac_pos`` (fraction of them with a positive attribution). With ``n_top``, only the ``n_top`` TFs
  of largest ``mean_attr`` per gene and group, in descending order; otherwise every TF in the file's order.
* **peak summary** (``peak_to_gene``, for peak attribution files): the same per peak, with the columns
  ``peak``, ``gene``, ``<groupby>``, ``mean_attr``, ``std_attr``, ``z_score`` (of ``mean_attr`` across the
  gene's peaks within the group: minus their mean, over their population std), ``p_value``
  (``2 * (1 - Phi(|z|))``), ``n_cells``, ``frac_pos``. The z-score always uses every peak of the gene, also
  with ``n_top``; a gene whose peaks all have the same mean gets ``z_score`` 0 and ``p_value`` 1 (upstream
  divides by zero).
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
from ..io.schema import FEATURE_LABEL, VAR_INDEX_NAME
from .groups import Groups, groups_from_attribution_files, read_groups

#: The statistics columns of a summary table, by target (after the feature, gene and group columns).
STAT_COLUMNS = {"tfs": ("mean_attr", "std_attr", "n_cells", "frac_pos"),
                "peaks": ("mean_attr", "std_attr", "z_score", "p_value", "n_cells", "frac_pos")}
#: Every column a summary table may have besides its group column.
KNOWN_COLUMNS = ("tf", "peak", "gene", *STAT_COLUMNS["peaks"])
#: Columns of a TF summary table besides the group column.
SUMMARY_COLUMNS = ("tf", "gene", *STAT_COLUMNS["tfs"])


def summary_columns(target: str, groupby: str | None) -> list[str]:
    """The columns of a summary table of ``target`` grouped by ``groupby``, in order."""
    return [VAR_INDEX_NAME[target], "gene", *([groupby] if groupby is not None else []), *STAT_COLUMNS[target]]


@dataclass
class GeneStats:
    """Per-group statistics of one gene's attributions (groups with at least one cell)."""

    gene: str
    features: list[str]  # TFs or peaks
    groups: list  # labels, in order
    n_cells: np.ndarray  # (G,)
    mean: np.ndarray  # (G, T) float64
    std: np.ndarray  # (G, T) float64, ddof 0
    n_pos: np.ndarray  # (G, T) cells with attribution > 0
    n_missing: int = 0  # cells left out because their group is missing
    shard: tuple[int, int] | None = None
    target: str = "tfs"


def gene_stats(attr: Attributions, groups: Groups | None, codes: np.ndarray | None = None) -> GeneStats:
    """Mean, std (ddof 0) and positive count per group and feature; ``groups=None`` = all cells as one group.

    ``codes``: the group codes of ``attr``'s cells when the caller has them already (``groups.codes_for``
    of the same cells); otherwise they are matched here.
    """
    if groups is None:
        codes, labels = np.zeros(len(attr.obs_names), dtype=np.int64), [None]
    else:
        codes = groups.codes_for(attr.obs_names, attr.path) if codes is None else codes
        labels = groups.order
    kept = codes >= 0
    n_missing = int((~kept).sum())
    order = np.argsort(codes[kept], kind="stable")
    x = attr.values[kept][order]
    counts = np.bincount(codes[kept], minlength=len(labels))
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]]).astype(np.int64)
    t = len(attr.features)
    if len(present) == 0:
        empty = np.zeros((0, t))
        return GeneStats(attr.gene, attr.features, [], np.zeros(0, np.int64), empty, empty,
                         np.zeros((0, t), np.int64), n_missing, attr.shard, attr.target)
    n = counts[present]
    mean = np.add.reduceat(x, starts, axis=0, dtype=np.float64) / n[:, None]
    dev = x - np.repeat(mean, n, axis=0)
    std = np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / n[:, None])
    n_pos = np.add.reduceat((x > 0).astype(np.int64), starts, axis=0)
    return GeneStats(attr.gene, attr.features, [labels[i] for i in present], n.astype(np.int64), mean, std,
                     n_pos, n_missing, attr.shard, attr.target)


def top_order(values: np.ndarray, n: int | None) -> np.ndarray:
    """Positions of the ``n`` largest values, largest first, ties in their original order (all when ``None``)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return order if n is None else order[:n]


def peak_scores(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``peak_to_gene``'s z-score of each peak's mean among the gene's peaks (per row: a group) and its
    two-sided normal p-value; rows whose means are all equal get z 0, p 1."""
    from scipy.special import ndtr

    centred = mean - mean.mean(axis=1, keepdims=True)
    sd = mean.std(axis=1, keepdims=True)
    z = np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 0)
    return z, 2.0 * ndtr(-np.abs(z))  # = 2 * (1 - Phi(|z|)), without the cancellation for large |z|


def gene_table(stats: GeneStats, groupby: str | None = None, n_top: int | None = None,
               group_order: list | None = None) -> pd.DataFrame:
    """Upstream's ``tf_to_gene`` (TF files) or ``peak_to_gene`` (peak files) table for one gene (see above).

    ``groupby=None`` gives the whole-population table (no group column). ``group_order`` (all groups of
    the column) makes the group column categorical in that order, so tables of many genes agree.
    """
    blocks = []
    names = np.asarray(stats.features, dtype=object)
    feature = VAR_INDEX_NAME[stats.target]
    scores = peak_scores(stats.mean) if stats.target == "peaks" else None
    for g, label in enumerate(stats.groups):
        pick = np.arange(len(names)) if n_top is None else top_order(stats.mean[g], n_top)
        block = {feature: names[pick], "gene": stats.gene}
        if groupby is not None:
            block[groupby] = [label] * len(pick)
        block.update(mean_attr=stats.mean[g, pick], std_attr=stats.std[g, pick])
        if scores is not None:
            block.update(z_score=scores[0][g, pick], p_value=scores[1][g, pick])
        block.update(n_cells=int(stats.n_cells[g]), frac_pos=stats.n_pos[g, pick] / stats.n_cells[g])
        blocks.append(pd.DataFrame(block))
    columns = summary_columns(stats.target, groupby)
    table = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    if groupby is not None:
        order = group_order if group_order is not None else list(stats.groups)
        table[groupby] = pd.Categorical(table[groupby], categories=order)
    return table[columns]


@dataclass
class Summary:
    """The concatenated ``tf_to_gene`` (or ``peak_to_gene``) tables of many genes, with what was left out."""

    table: pd.DataFrame
    groupby: str | None
    genes: list[str]
    missing: dict[str, int] = field(default_factory=dict)  # gene -> cells with a missing group
    shards: dict[str, tuple[int, int]] = field(default_factory=dict)  # gene -> (index, count) of partial files
    empty_groups: list = field(default_factory=list)  # groups of the column with no cell in any file
    target: str = "tfs"
    n_top: int | None = None  # each gene's n_top TFs (peaks) per group were kept, largest mean first

    @property
    def feature(self) -> str:
        """The feature column: ``tf`` or ``peak``."""
        return VAR_INDEX_NAME[self.target]

    @property
    def feature_label(self) -> str:
        """``TF`` or ``peak``, for messages and figures."""
        return FEATURE_LABEL[self.target]

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
              n_top: int | None = None, on_gene: Callable[[int, str], None] | None = None) -> Summary:
    """``tf_to_gene`` (or ``peak_to_gene``) for every attribution file, concatenated in the files' order.

    Parameters
    ----------
    files
        Attribution files (see :func:`collect_attribution_files` for directories and lists), all of TFs or
        all of peaks.
    data
        The ``.h5mu`` (or MuData) holding the ``groupby`` column. Without it, ``groupby`` is read from the
        ``obs`` that ``.h5ad`` attribution files carry.
    groupby
        obs column; ``None`` = one table over all cells of each file.
    n_top
        Keep the ``n_top`` TFs (peaks) of largest mean attribution per gene and group.
    on_gene
        Called with (position, gene) after each file.
    """
    check_top(n_top, "top")
    files = [Path(f) for f in files]
    groups_of = _groups_of(files, data, groupby)
    order = next(iter(groups_of.values())).order if groups_of else None
    tables, genes, missing, shards, targets = [], {}, {}, {}, {}
    last: tuple = ()  # (groups, obs names, their codes) of the previous file
    for i, path in enumerate(files):
        attr = read_attributions(path)
        if attr.gene in genes:
            shard = attr.shard or shards.get(attr.gene)
            hint = " (shards of one run: merge them first with cell2net-attr merge)" if shard else ""
            raise UserError(f"gene {attr.gene!r} is also in {genes[attr.gene]}{hint}", path)
        if targets and attr.target not in targets:
            other = next(iter(targets.items()))
            raise UserError(f"holds {FEATURE_LABEL[attr.target]} attributions but {other[1]} holds "
                            f"{FEATURE_LABEL[other[0]]} attributions: summarize them separately", path)
        genes[attr.gene], targets[attr.target] = path, path
        groups = groups_of.get(path)
        if groups is not None and not (last and last[0] is groups and last[1].equals(attr.obs_names)):
            last = (groups, attr.obs_names, groups.codes_for(attr.obs_names, path))
        # run-many outputs share their cells: the codes of the previous file serve again
        stats = gene_stats(attr, groups, last[2] if groups is not None else None)
        if stats.n_missing:
            missing[attr.gene] = stats.n_missing
        if stats.shard:
            shards[attr.gene] = stats.shard
        tables.append(gene_table(stats, groupby, n_top, order))
        if on_gene is not None:
            on_gene(i, attr.gene)
    if not tables:
        raise UserError("no attribution files given", "ATTR")
    table = pd.concat(tables, ignore_index=True)
    empty = []
    if groupby is not None:  # concat keeps the categorical only when every table had rows
        table[groupby] = pd.Categorical(table[groupby], categories=order)
        seen = set(table[groupby].dropna().unique())
        empty = [g for g in order if g not in seen]
    return Summary(table, groupby, list(genes), missing, shards, empty, next(iter(targets)), n_top)


def _groups_of(files: list[Path], data, groupby: str | None) -> dict[Path, Groups]:
    """Each file's :class:`Groups`: from ``data`` when given, else from the obs of ``.h5ad`` files."""
    if groupby is None:
        return {}
    if data is not None:
        groups = read_groups(data, groupby)
        return dict.fromkeys(files, groups)
    return groups_from_attribution_files(files, groupby)


def limit_per_gene(summary: Summary, n_top: int) -> Summary:
    """Keep each gene's ``n_top`` TFs of largest ``mean_attr`` per group (largest first, ties in table order)."""
    check_top(n_top, "per_gene_top")
    table = summary.table
    keys = [table["gene"]] + ([table[summary.groupby]] if summary.groupby else [])
    order = np.argsort(-table["mean_attr"].to_numpy(dtype=np.float64), kind="stable")
    ranked = table.iloc[order]
    rank = ranked.groupby([k.iloc[order] for k in keys], sort=False, observed=True).cumcount()
    kept = ranked[rank.to_numpy() < n_top]
    # back to gene, then group order, the TFs of each largest first
    first = pd.Series(np.arange(len(table)), index=table.index)
    block = kept.groupby([k.loc[kept.index] for k in keys], sort=False, observed=True).ngroup()
    start = first.loc[kept.index].groupby(block.to_numpy()).transform("min")
    kept = kept.iloc[np.lexsort((np.arange(len(kept)), start.to_numpy()))].reset_index(drop=True)
    return Summary(kept, summary.groupby, summary.genes, summary.missing, summary.shards, summary.empty_groups,
                   summary.target, n_top)


def check_top(n: int | None, param: str) -> None:
    """A ``top``-like count (the parameter ``param``) must be a positive integer."""
    if n is not None and n < 1:
        raise UserError(f"must be a positive number, got {n}", param=param)
