"""TF activity per group (sum of mean attributions over genes) and upstream's ``get_top_tfs``.

The matrices also serve peak summaries, for figures: their rows are peaks (``peak (gene)`` with several
genes, so that a peak linked to two genes keeps two rows), each a gene's own value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..errors import UserError
from .summary import Summary, check_top, top_order


def _group_column(summary: Summary) -> tuple[pd.Series, list]:
    if summary.groupby is None:
        return pd.Series(["all cells"] * len(summary.table), index=summary.table.index), ["all cells"]
    col = summary.table[summary.groupby]
    cats = list(col.cat.categories)
    present = set(col.dropna().unique())
    return col, [c for c in cats if c in present]


def _row_keys(summary: Summary) -> np.ndarray:
    """The row label of each table row: the TF, or the peak (``peak (gene)`` over several genes)."""
    names = summary.table[summary.feature].to_numpy(dtype=object)
    if summary.target == "peaks" and len(summary.genes) > 1:
        genes = summary.table["gene"].to_numpy(dtype=object)
        names = np.array([f"{p} ({g})" for p, g in zip(names, genes)], dtype=object)
    return names


def require_tfs(summary: Summary) -> None:
    """TF activity sums TF attributions over genes: refuse a peak summary."""
    if summary.target != "tfs":
        raise UserError("TF activity needs TF attributions; these are peak attributions (plot draws them)",
                        "INPUTS")


def activity_matrix(summary: Summary) -> pd.DataFrame:
    """TF x group: the sum of ``mean_attr`` over genes (0 where no gene's table has the TF).

    TFs in order of first appearance, groups in the summary's group order. For a peak summary each row is one
    gene's peak, and a peak absent from a group's table (``summarize --top``) is NaN: it has no value there.
    """
    col, groups = _group_column(summary)
    keys = _row_keys(summary)
    frame = pd.DataFrame({"tf": keys, "group": np.asarray(col, dtype=object),
                          "v": summary.table["mean_attr"].to_numpy(dtype=np.float64)})
    sums = frame.groupby(["tf", "group"], sort=False)["v"].sum().unstack("group")
    matrix = sums.reindex(index=list(pd.unique(keys)), columns=groups)
    if summary.target == "tfs":
        matrix = matrix.fillna(0.0)
    matrix.index.name, matrix.columns.name = summary.feature, summary.groupby
    return matrix


def pooled_matrices(summary: Summary) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TF x group mean attribution and fraction of positive attributions, pooled over the cells of all genes
    whose table has the TF (weighted by ``n_cells``; equal to the gene's own values for one gene). NaN where
    no gene has the TF for that group. Needs ``n_cells`` and ``frac_pos`` (tables from ``summarize``)."""
    lacking = [c for c in ("n_cells", "frac_pos") if c not in summary.table.columns]
    if lacking:
        raise UserError(f"the dotplot needs the {lacking[0]!r} column that cell2net-attr summarize writes", "TABLE")
    col, groups = _group_column(summary)
    keys = _row_keys(summary)
    n = summary.table["n_cells"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame({"tf": keys, "group": np.asarray(col, dtype=object), "n": n,
                          "s": summary.table["mean_attr"].to_numpy(dtype=np.float64) * n,
                          "p": summary.table["frac_pos"].to_numpy(dtype=np.float64) * n})
    sums = frame.groupby(["tf", "group"], sort=False)[["n", "s", "p"]].sum()
    index, columns = list(pd.unique(keys)), groups
    mean = (sums["s"] / sums["n"]).unstack("group").reindex(index=index, columns=columns)
    frac = (sums["p"] / sums["n"]).unstack("group").reindex(index=index, columns=columns)
    for m in (mean, frac):
        m.index.name, m.columns.name = summary.feature, summary.groupby
    return mean, frac


def top_variable_tfs(activity: pd.DataFrame, n_top: int = 5, var_cutoff: float = 0.5) -> pd.DataFrame:
    """Upstream's ``get_top_tfs``: per group, the ``n_top`` TFs of highest z-score among the most variable.

    Rows are ranked by variance across groups (ddof 1, ties in row order) and the first
    ``int(len(activity) * var_cutoff)`` kept; each is z-scored across groups (ddof 1); each group lists
    its ``n_top`` highest (ties: the more variable TF first). TFs constant across groups have no z-score
    and are never listed. Returns one column per group, rows ranked from 1 (as many as every group has).
    """
    lists = top_variable_lists(activity, n_top, var_cutoff)
    n = min((len(v) for v in lists.values()), default=0)
    table = pd.DataFrame({g: v[:n] for g, v in lists.items()}, index=pd.RangeIndex(1, n + 1, name="rank"))
    table.columns = pd.Index(list(activity.columns), name=activity.columns.name)
    return table


def top_variable_lists(activity: pd.DataFrame, n_top: int = 5, var_cutoff: float = 0.5) -> dict:
    """:func:`top_variable_tfs` as one list per group. NaN (a peak absent from a group) is left out of its
    row's variance, mean and std, as pandas does upstream, and a row is never listed for a group where it
    is NaN; so groups may list different numbers of rows."""
    check_top(n_top, "top")
    if not 0 < var_cutoff <= 1:
        raise UserError(f"must be in (0, 1], got {var_cutoff}", param="var_cutoff")
    if activity.shape[1] < 2:
        raise UserError(f"the variance across groups needs at least 2 groups (columns), got {activity.shape[1]}",
                        param="activity")
    keep = int(len(activity) * var_cutoff)
    if keep < 1:
        raise UserError(f"keeps int({len(activity)} x {var_cutoff}) = 0 TFs; raise it", param="var_cutoff")
    values = activity.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with fewer than 2 values: no variance (NaN, last)
        rows = top_order(np.nanvar(values, axis=1, ddof=1), keep)
        kept = values[rows]
        z = (kept - np.nanmean(kept, axis=1, keepdims=True)) / np.nanstd(kept, axis=1, ddof=1, keepdims=True)
    names = activity.index.to_numpy()[rows]
    out = {}
    for j, group in enumerate(activity.columns):
        score = np.where(np.isfinite(z[:, j]), z[:, j], -np.inf)
        out[group] = list(names[top_order(score, min(n_top, int(np.isfinite(score).sum())))])
    return out


def zscore_rows(matrix: pd.DataFrame) -> pd.DataFrame:
    """Each row z-scored across columns (ddof 1, as ``get_top_tfs``); constant rows become 0, NaN stays NaN
    (and is left out of its row's mean and std)."""
    values = matrix.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows of one value or all NaN: no spread
        sd = np.nanstd(values, axis=1, ddof=1, keepdims=True)
        z = np.where(sd > 0, (values - np.nanmean(values, axis=1, keepdims=True)) / sd, 0.0)
    return pd.DataFrame(np.where(np.isnan(values), np.nan, z), index=matrix.index, columns=matrix.columns)
