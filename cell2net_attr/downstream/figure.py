"""What the ``plot`` command draws from a summary: which rows, in which order, with which labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..errors import UserError
from . import activity as act
from . import plots
from .choices import KINDS
from .summary import Summary, top_order

TALL = 500  # rows from which a note suggests --top


@dataclass
class Drawn:
    """A figure with what it shows, for the report line."""

    figure: object
    n_rows: int
    n_groups: int
    notes: list[str] = field(default_factory=list)


def top_rows(matrix: pd.DataFrame, top: int, var_cutoff: float) -> list:
    """The top variable rows of every group, group after group, each once; by value with one group."""
    if matrix.shape[1] < 2:
        return list(matrix.index[top_order(matrix.iloc[:, 0].to_numpy(), top)])
    best = act.top_variable_tfs(matrix, top, var_cutoff)
    return list(dict.fromkeys(row for group in best.columns for row in best[group]))


def check_options(kind: str, zscore: bool) -> None:
    """A known ``kind``, and ``zscore`` only for the heatmap (checked before any file is read)."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}, choose dotplot or heatmap", param="kind")
    if zscore and kind != "heatmap":
        raise UserError("only the heatmap can be z-scored", param="zscore")


def attribution_figure(summary: Summary, kind: str = "dotplot", top: int | None = None, var_cutoff: float = 0.5,
                       zscore: bool = False, order: str | None = None, title: str | None = None) -> Drawn:
    """A dotplot (colour = mean attribution, size = fraction of cells > 0) or heatmap of a summary.

    Rows are TFs (or peaks); ``top`` keeps each group's most variable ones (as ``activity``); ``order`` is
    one of :data:`plots.ORDERS` (default: groups, or the top lists as they are with ``top``).
    """
    check_options(kind, zscore)
    matrix = act.activity_matrix(summary)
    notes = []
    if top is not None:
        rows = top_rows(matrix, top, var_cutoff)
    else:
        rows = list(matrix.index)
        if len(rows) > TALL:
            notes.append(f"{len(rows)} {summary.feature_label}s make a tall figure; --top N shows the most "
                         f"variable ones")
    how = order or ("input" if top is not None else "groups")
    n_genes, by = len(summary.genes), f" by {summary.groupby}" if summary.groupby else ""
    what = plots.genes_title(summary.genes)
    if kind == "dotplot":
        mean, frac = (m.loc[rows] for m in act.pooled_matrices(summary))
        shown = plots.display_order(mean, how)
        pooled = n_genes > 1 and summary.target == "tfs"
        label = "mean attribution" + (f"\n(cells of {n_genes} genes)" if pooled else "")
        fig = plots.dotplot(mean.loc[shown], frac.loc[shown],
                            title or f"{what}: {summary.feature_label} attribution{by}", label, summary.groupby)
    else:
        values = (act.zscore_rows(matrix) if zscore else matrix).loc[rows]
        shown = plots.display_order(values, how)
        tfs = summary.target == "tfs"
        label = (f"{'activity ' if tfs else ''}z-score\nacross groups" if zscore else
                 "activity (sum of mean\nattribution over genes)" if tfs and n_genes > 1 else "mean attribution")
        name = "TF activity" if tfs else "peak attribution"
        fig = plots.heatmap(values.loc[shown], title or f"{what}: {name}{by}", label, summary.groupby)
    return Drawn(fig, len(rows), matrix.shape[1], notes)
