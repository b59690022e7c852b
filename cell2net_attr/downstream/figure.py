"""What the ``plot`` command draws from a summary or an activity matrix: which rows, in which order, with which
labels and title."""

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
    label: str = "TF"  # what a row is


def top_rows(matrix: pd.DataFrame, top: int, var_cutoff: float) -> list:
    """The rows ``--top`` shows, the same for every kind of figure: each group's ``top`` most variable rows as
    ``activity`` lists them (:func:`~cell2net_attr.downstream.activity.top_variable_tfs`), group after group,
    each once; with one group, its ``top`` largest."""
    if matrix.shape[1] < 2:
        return list(matrix.index[top_order(matrix.iloc[:, 0].to_numpy(), top)])
    best = act.top_variable_lists(matrix, top, var_cutoff)
    return list(dict.fromkeys(row for rows in best.values() for row in rows))


def check_options(kind: str, zscore: bool) -> None:
    """A known ``kind``, and ``zscore`` only for the heatmap (checked before any file is read)."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}, choose dotplot or heatmap", param="kind")
    if zscore and kind != "heatmap":
        raise UserError("only the heatmap can be z-scored", param="zscore")


def _rows(matrix: pd.DataFrame, top: int | None, var_cutoff: float, label: str) -> tuple[list, list[str]]:
    if top is not None:
        return top_rows(matrix, top, var_cutoff), []
    notes = [f"{len(matrix)} {label}s make a tall figure; --top N shows the most variable ones"] \
        if len(matrix) > TALL else []
    return list(matrix.index), notes


def _order(order: str | None, top: int | None, peaks: bool) -> str:
    """The row order: as asked; else peaks in genome order, TFs as the top lists (with ``top``) or by group."""
    if order == "genome" and not peaks:
        raise UserError("genome order is for peaks (TFs have no place on the genome)", param="order")
    return order or ("genome" if peaks else "input" if top is not None else "groups")


def _titles(genes: list[str], what: str, by: str) -> list[str]:
    """Title candidates, longest first: the genes listed, then counted, then the subject alone."""
    out = [f"{plots.genes_title(genes)}: {what}{by}"] if genes else []
    if len(genes) > 1:
        out.append(f"{len(genes)} genes: {what}{by}")
    return out + [f"{what}{by}"]


def _blank_note(matrix: pd.DataFrame, label: str, kind: str) -> str | None:
    if not matrix.isna().to_numpy().any():
        return None
    blank = "no dot" if kind == "dotplot" else "grey"
    return f"{blank}: the {label} is not in the summary for that group (summarize --top)"


def attribution_figure(summary: Summary, kind: str = "dotplot", top: int | None = None, var_cutoff: float = 0.5,
                       zscore: bool = False, order: str | None = None, title: str | None = None) -> Drawn:
    """A dotplot (colour = mean attribution, size = fraction of cells > 0) or heatmap of a summary.

    Rows are TFs (or peaks); ``top`` keeps each group's most variable ones (as ``activity``, see
    :func:`top_rows`); ``order`` is one of :data:`~cell2net_attr.downstream.choices.ORDERS` (default: genome
    for peaks; the top lists as they are with ``top``; otherwise groups).
    """
    check_options(kind, zscore)
    peaks, label = summary.target == "peaks", summary.feature_label
    matrix = act.activity_matrix(summary)
    rows, notes = _rows(matrix, top, var_cutoff, label)
    how = _order(order, top, peaks)
    n_genes, by = len(summary.genes), f" by {summary.groupby}" if summary.groupby else ""
    if kind == "dotplot":
        mean, frac = (m.loc[rows] for m in act.pooled_matrices(summary))
        shown = plots.display_order(mean, how)
        pooled = n_genes > 1 and not peaks
        color = "mean attribution" + (f"\n(cells of {n_genes} genes)" if pooled else "")
        fig = plots.dotplot(mean.loc[shown], frac.loc[shown], title or _titles(summary.genes, f"{label} attribution",
                            by), color, summary.groupby, _blank_note(mean, label, kind))
    else:
        values = (act.zscore_rows(matrix) if zscore else matrix).loc[rows]
        shown = plots.display_order(values, how)
        color = (f"{'activity ' if not peaks else ''}z-score\nacross groups" if zscore else
                 "activity (sum of mean\nattribution over genes)" if not peaks and n_genes > 1 else "mean attribution")
        name = "peak attribution" if peaks else "TF activity"
        fig = plots.heatmap(values.loc[shown], title or _titles(summary.genes, name, by), color, summary.groupby,
                            _blank_note(values, label, kind))
    return Drawn(fig, len(rows), matrix.shape[1], notes, label)


def activity_figure(matrix: pd.DataFrame, genes: list[str] = (), top: int | None = None, var_cutoff: float = 0.5,
                    zscore: bool = False, order: str | None = None, title: str | None = None) -> Drawn:
    """The heatmap of an activity matrix (TF x group, as ``activity`` writes it); rows and order as for
    :func:`attribution_figure`."""
    rows, notes = _rows(matrix, top, var_cutoff, "TF")
    values = (act.zscore_rows(matrix) if zscore else matrix).loc[rows]
    shown = plots.display_order(values, _order(order, top, False))
    groupby = matrix.columns.name
    by = f" by {groupby}" if groupby else ""
    color = "activity z-score\nacross groups" if zscore else "activity (sum of mean\nattribution over genes)"
    fig = plots.heatmap(values.loc[shown], title or _titles(list(genes), "TF activity", by), color, groupby)
    return Drawn(fig, len(rows), matrix.shape[1], notes, "TF")
