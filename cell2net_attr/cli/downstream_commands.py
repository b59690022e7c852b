"""Downstream commands: ``summarize``, ``activity`` and ``plot`` (registered on the main ``app``).

Tables go to ``--out`` (``-`` = stdout); notes (cells left out, partial files) and the one-line summary
go to stderr. Inputs are attribution files (``run`` / ``run-many`` HDF5 or AnnData outputs, directories of
them, ``@FILE`` lists) or, for ``activity`` and ``plot``, the tables ``summarize`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .common import err, reported

_ATTR_HELP = "Attribution .h5/.h5ad files, run-many output directories, or @FILE lists (@- = stdin)."
_IN_HELP = ("summarize tables (.tsv/.csv; - = TSV on stdin), or attribution .h5/.h5ad files, run-many output "
            "directories, or @FILE lists (@- = stdin).")
_OPT = {
    "data": typer.Option(None, "--data", help="The .h5mu whose obs holds the --groupby column."),
    "groupby": typer.Option(None, "--groupby", help="obs column defining the groups (NaN values are left out)."),
    "overwrite": typer.Option(False, "--overwrite", help="Replace an existing output."),
    "quiet": typer.Option(False, "--quiet", "-q", help="No summary line (notes are still shown)."),
    "var_cutoff": typer.Option(0.5, "--var-cutoff",
                               help="Share of TFs kept by variance across groups before z-scoring, in (0, 1]."),
}


def _notes(summary) -> None:
    for note in summary.notes():
        err(f"note: {note}")


def _load(inputs: list[str], data: Optional[Path], groupby: Optional[str], per_gene_top: Optional[int] = None):
    """A :class:`~cell2net_attr.downstream.summary.Summary` from summary tables or from attribution files."""
    from ..downstream import summary as stats
    from ..downstream import tables_io
    from ..downstream.inputs import collect_attribution_files

    as_table = [item == "-" or (not item.startswith("@") and tables_io.is_table(item)) for item in inputs]
    if any(as_table) and not all(as_table):
        raise UserError("give either summarize tables or attribution files, not both", "INPUTS")
    if not all(as_table):
        files = collect_attribution_files(inputs)
        summary = stats.summarize(files, data, groupby, per_gene_top)
        _notes(summary)
        return summary, files
    if data is not None:
        err("note: --data is not used with summarize tables (they are already grouped)")
    summary = tables_io.read_summary(inputs)
    if groupby is not None and groupby != summary.groupby:
        raise UserError(f"the tables are grouped by {summary.groupby!r}, not {groupby!r}", "--groupby")
    if per_gene_top is not None:
        summary = stats.limit_per_gene(summary, per_gene_top)
    return summary, [Path(i) for i in inputs if i != "-"]


SUMMARIZE_HELP = (
    "Per gene, group and TF: mean and std (ddof 0) of the attributions, as upstream tf_to_gene.\n\n"
    "Columns: tf, gene, <groupby>, mean_attr, std_attr, n_cells, frac_pos. Genes in input order; groups in "
    "category order (categorical column) or sorted; TFs in file order, or by mean_attr with --top (ties in "
    "file order). Cells are matched by name; cells with a NaN group are left out (counted on stderr). "
    "Without --groupby, one table over all cells of each file."
)
ACTIVITY_HELP = (
    "TF x group activity (sum of mean attribution over genes) and the top variable TFs per group.\n\n"
    "The top TFs follow upstream get_top_tfs: rank TFs by variance across groups, keep the top --var-cutoff "
    "share, z-score each across groups, list the --top highest per group."
)
PLOT_HELP = (
    "Draw a dotplot or a heatmap of TF attributions per group (PNG, PDF or SVG).\n\n"
    "TFs are rows and every TF keeps a readable label: the figure grows with the number of TFs, and --top "
    "selects the most variable ones."
)


def summarize(
    attr: list[str] = typer.Argument(..., help=_ATTR_HELP),
    data: Optional[Path] = _OPT["data"],
    groupby: Optional[str] = _OPT["groupby"],
    top: Optional[int] = typer.Option(None, "--top", help="Keep the N TFs of largest mean attribution per gene "
                                                          "and group (largest first) (default: all, file order)."),
    out: str = typer.Option("-", "--out", "-o", help="Output .tsv or .csv (.gz compresses), or - for stdout."),
    overwrite: bool = _OPT["overwrite"],
    quiet: bool = _OPT["quiet"],
) -> None:
    """Upstream's tf_to_gene table for one or many genes (see ``SUMMARIZE_HELP``)."""
    from ..downstream import summary as stats
    from ..downstream import tables_io
    from ..downstream.inputs import collect_attribution_files

    with reported():
        stats.check_top(top, "--top")
        if data is not None and groupby is None:
            err("note: --data is not used without --groupby")
            data = None
        files = collect_attribution_files(attr)
        tables_io.check_table_output(out, overwrite, files + ([data] if data else []))
        summary = stats.summarize(files, data, groupby, top)
        _notes(summary)
        tables_io.write_table(summary.table, out)
        if not quiet:
            groups = f" x {summary.table[groupby].nunique()} groups" if groupby else ""
            err(f"summarized {len(summary.genes)} gene(s){groups}: {len(summary.table)} rows -> "
                 f"{'stdout' if out == '-' else out}")


def activity(
    inputs: list[str] = typer.Argument(..., help=_IN_HELP),
    data: Optional[Path] = _OPT["data"],
    groupby: Optional[str] = _OPT["groupby"],
    per_gene_top: Optional[int] = typer.Option(None, "--per-gene-top",
                                               help="Sum only each gene's N TFs of largest mean per group."),
    out: str = typer.Option("-", "--out", "-o", help="TF x group activity matrix: .tsv/.csv, or - for stdout."),
    top_out: Optional[str] = typer.Option(None, "--top-out", help="Top variable TFs per group: .tsv/.csv, or - "
                                                                  "(default: listed on stderr)."),
    top: int = typer.Option(5, "--top", help="Top variable TFs listed per group."),
    var_cutoff: float = _OPT["var_cutoff"],
    overwrite: bool = _OPT["overwrite"],
    quiet: bool = _OPT["quiet"],
) -> None:
    """The TF x group activity matrix and upstream's get_top_tfs (see ``ACTIVITY_HELP``)."""
    from ..downstream import activity as act
    from ..downstream import summary as stats
    from ..downstream import tables_io

    with reported():
        stats.check_top(top, "--top")
        stats.check_top(per_gene_top, "--per-gene-top")
        if not 0 < var_cutoff <= 1:
            raise UserError(f"must be in (0, 1], got {var_cutoff}", "--var-cutoff")
        if out == "-" and top_out == "-":
            raise UserError("--out and --top-out cannot both be stdout", "--top-out")
        tables_io.check_table_output(out, overwrite)
        if top_out is not None:
            tables_io.check_table_output(top_out, overwrite)
            if top_out != "-" and Path(top_out).resolve() == Path(out).resolve():
                raise UserError("--out and --top-out name the same file", "--top-out")
        summary, sources = _load(inputs, data, groupby, per_gene_top)
        for path in (out, top_out):
            if path not in (None, "-") and any(Path(path).resolve() == Path(s).resolve() for s in sources):
                raise UserError("output would overwrite an input file", path)
        matrix = act.activity_matrix(summary)
        best = act.top_variable_tfs(matrix, top, var_cutoff)
        tables_io.write_table(matrix, out, index=True)
        if top_out is not None:
            tables_io.write_table(best, top_out, index=True)
        elif not quiet:
            err(f"top {len(best)} variable TFs per group (--var-cutoff {var_cutoff}):")
            for group in best.columns:
                err(f"  {group}: {', '.join(map(str, best[group]))}")
        if not quiet:
            err(f"activity of {matrix.shape[0]} TFs x {matrix.shape[1]} groups over {len(summary.genes)} "
                 f"gene(s) -> {'stdout' if out == '-' else out}")


def plot(
    inputs: list[str] = typer.Argument(..., help=_IN_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Figure .png, .pdf or .svg."),
    kind: str = typer.Option("dotplot", "--kind", help="dotplot (colour = mean attribution, size = fraction of "
                                                       "cells > 0) or heatmap (TF activity)."),
    data: Optional[Path] = _OPT["data"],
    groupby: Optional[str] = _OPT["groupby"],
    top: Optional[int] = typer.Option(None, "--top", help="Show the N top variable TFs per group (as activity) "
                                                          "(default: every TF)."),
    var_cutoff: float = _OPT["var_cutoff"],
    zscore: bool = typer.Option(False, "--zscore", help="Heatmap: z-score each TF across groups."),
    order: Optional[str] = typer.Option(None, "--order", help="TF rows: groups (by the group where a TF stands out "
                                                        "most), value (mean over groups, largest first) or "
                                                        "input (default: groups; the top-TF lists with --top)."),
    title: Optional[str] = typer.Option(None, "--title", help="Figure title (default: gene(s) and groups)."),
    dpi: int = typer.Option(150, "--dpi", help="Resolution of PNG output."),
    overwrite: bool = _OPT["overwrite"],
    quiet: bool = _OPT["quiet"],
) -> None:
    """A dotplot or heatmap of TF attributions per group (see ``PLOT_HELP``)."""
    from ..downstream import activity as act
    from ..downstream import plots
    from ..downstream import summary as stats

    with reported():
        if kind not in ("dotplot", "heatmap"):
            raise UserError(f"unknown kind {kind!r}, choose dotplot or heatmap", "--kind")
        stats.check_top(top, "--top")
        if not 0 < var_cutoff <= 1:
            raise UserError(f"must be in (0, 1], got {var_cutoff}", "--var-cutoff")
        if not 10 <= dpi <= 1200:
            raise UserError(f"must be between 10 and 1200, got {dpi}", "--dpi")
        if zscore and kind != "heatmap":
            raise UserError("only the heatmap can be z-scored", "--zscore")
        if order is not None and order not in plots.ORDERS:
            raise UserError(f"unknown order {order!r}, choose from {', '.join(plots.ORDERS)}", "--order")
        plots.check_figure_output(out, overwrite)
        summary, _ = _load(inputs, data, groupby, None)
        matrix = act.activity_matrix(summary)
        if top is not None:
            tfs = _top_tfs(matrix, top, var_cutoff)
        else:
            tfs = list(matrix.index)
            if len(tfs) > 500:
                err(f"note: {len(tfs)} TFs make a tall figure; --top N shows the most variable ones")
        how = order or ("input" if top is not None else "groups")  # input = the top-TF lists as they are
        n_genes, by = len(summary.genes), f" by {summary.groupby}" if summary.groupby else ""
        if kind == "dotplot":
            mean, frac = (m.loc[tfs] for m in act.pooled_matrices(summary))
            rows = plots.display_order(mean, how)
            label = "mean attribution" + (f"\n(cells of {n_genes} genes)" if n_genes > 1 else "")
            fig = plots.dotplot(mean.loc[rows], frac.loc[rows],
                                title or f"{plots.genes_title(summary.genes)}: TF attribution{by}", label,
                                summary.groupby)
        else:
            shown = (act.zscore_rows(matrix) if zscore else matrix).loc[tfs]
            rows = plots.display_order(shown, how)
            label = ("activity z-score\nacross groups" if zscore else
                     "activity (sum of mean\nattribution over genes)" if n_genes > 1 else "mean attribution")
            fig = plots.heatmap(shown.loc[rows], title or f"{plots.genes_title(summary.genes)}: TF activity{by}",
                                label, summary.groupby)
        plots.save_figure(fig, out, dpi)
        if not quiet:
            err(f"{kind} of {len(tfs)} TFs x {matrix.shape[1]} group(s) over {n_genes} gene(s) -> {out}")


def _top_tfs(matrix, top: int, var_cutoff: float) -> list[str]:
    """The top variable TFs of every group, group after group, each once; by value with one group."""
    from ..downstream import activity as act
    from ..downstream import summary as stats

    if matrix.shape[1] < 2:
        return list(matrix.index[stats.top_order(matrix.iloc[:, 0].to_numpy(), top)])
    best = act.top_variable_tfs(matrix, top, var_cutoff)
    return list(dict.fromkeys(tf for group in best.columns for tf in best[group]))
