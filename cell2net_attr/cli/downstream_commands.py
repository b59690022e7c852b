"""Downstream commands: ``summarize``, ``activity`` and ``plot`` (registered on the main ``app``).

Tables go to ``--out`` (``-`` = stdout); notes (cells left out, partial files) and the one-line summary
go to stderr. Inputs are attribution files (``run`` / ``run-many`` HDF5 or AnnData outputs, directories of
them, ``@FILE`` lists) or, for ``activity`` and ``plot``, the tables ``summarize`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from ..downstream.choices import KINDS, ORDERS
from ..errors import UserError
from .common import choices, err, plain, reported

_ATTR_HELP = "Attribution .h5/.h5ad files, run-many output directories, or @FILE lists (@- = stdin)."
_IN_HELP = ("summarize tables (.tsv/.csv; - = TSV on stdin) or .h5ad, or attribution .h5/.h5ad files, run-many "
            "output directories, or @FILE lists (@- = stdin).")
_PLOT_IN_HELP = _IN_HELP + " Or one activity table (.tsv/.csv/.h5ad from activity --out), drawn as a heatmap."
Kind = choices("Kind", KINDS)
Order = choices("Order", ORDERS)


def _var_cutoff(value: float) -> float:
    if not 0 < value <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
    return value


_OPT = {
    "data": typer.Option(None, "--data", show_default="the obs of .h5ad inputs",
                         help="The .h5mu whose obs holds the --groupby column."),
    "groupby": typer.Option(None, "--groupby", show_default="one group of all cells",
                            help="obs column defining the groups (NaN values are left out)."),
    "overwrite": typer.Option(False, "--overwrite", help="Replace an existing output."),
    "quiet": typer.Option(False, "--quiet", "-q", help="No summary line (notes are still shown)."),
    "var_cutoff": typer.Option(0.5, "--var-cutoff", callback=_var_cutoff,
                               help="Share of TFs kept by variance across groups before z-scoring, "
                                    "0 < x <= 1."),
}


def _notes(summary) -> None:
    for note in summary.notes():
        err(f"note: {note}")


@dataclass
class Loaded:
    """What ``activity`` or ``plot`` was given: a summary, or (``plot``) an activity matrix, and the files."""

    summary: object = None
    activity: object = None
    genes: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    source: object = None  # the activity file


def _load(inputs: list[str], data: Optional[Path], groupby: Optional[str], command: str,
          per_gene_top: Optional[int] = None) -> Loaded:
    """A summary from summaries (tables, .h5ad) or attribution files; for ``plot``, also an activity matrix."""
    from ..downstream import kinds
    from ..downstream import summary as stats
    from ..downstream import tables_io
    from ..downstream.inputs import collect_inputs

    as_table = [item == "-" or (not item.startswith("@") and tables_io.is_table(item)) for item in inputs]
    if any(as_table) and not all(as_table):
        raise UserError("give either summaries or attribution files, not both", "INPUTS")
    if all(as_table):
        opened = [tables_io.open_table(i) for i in inputs]
        kind, files = opened[0].kind or "summary", opened
    else:
        kind, files = collect_inputs(inputs, command)
    sources = [Path(str(getattr(f, "path", f))) for f in files if str(getattr(f, "path", f)) != "-"]
    if kind == "attributions":
        summary = stats.summarize(files, data, groupby, per_gene_top)
        _notes(summary)
        return Loaded(summary, genes=summary.genes, sources=sources)
    if data is not None:
        err(f"note: --data is not used with {'summaries' if kind == 'summary' else 'an activity table'} "
            f"(they are already grouped)")
    if kind == "activity":
        where = getattr(files[0], "path", files[0])
        if command != "plot":
            raise kinds.refusal(where, "activity", command)
        if len(files) > 1:
            raise UserError("plot draws one activity table at a time", "INPUTS")
        matrix, genes = tables_io.read_activity(files[0])
        _check_groupby(groupby, matrix.columns.name, named=tables_io.is_h5ad(where))
        return Loaded(activity=matrix, genes=genes, sources=sources, source=where)
    summary = tables_io.read_summary(files, command)
    _check_groupby(groupby, summary.groupby)
    if per_gene_top is not None:
        summary = stats.limit_per_gene(summary, per_gene_top)
    return Loaded(summary, genes=summary.genes, sources=sources)


def _check_groupby(groupby: Optional[str], grouped_by: Optional[str], named: bool = True) -> None:
    """``--groupby`` with inputs already grouped: it must name their grouping (a TSV activity table does not
    keep the name of its group column: then it is only noted as unused)."""
    if groupby is None or groupby == grouped_by:
        return
    if not named:
        err("note: --groupby is not used: the activity table is already grouped")
        return
    raise UserError(f"the inputs are grouped by {grouped_by!r}, not {groupby!r}" if grouped_by else
                    f"the inputs are one table over all cells, not grouped by {groupby!r}", "--groupby")


SUMMARIZE_HELP = (
    "Per gene, group and TF (or peak): mean and std (ddof 0) of the attributions, as upstream tf_to_gene "
    "(peak_to_gene for peak attributions).\n\n"
    "Columns: tf, gene, <groupby>, mean_attr, std_attr, n_cells, frac_pos; peak files: peak, gene, <groupby>, "
    "mean_attr, std_attr, z_score, p_value, n_cells, frac_pos (z_score of mean_attr across the gene's peaks in "
    "the group, p_value = 2(1 - Phi(|z|))). Genes in input order; groups in category order (categorical column) "
    "or sorted; TFs in file order, or by mean_attr with --top (ties in file order). Cells are matched by name; "
    "cells with a NaN group are left out (counted on stderr). Without --groupby, one table over all cells of "
    "each file. --out S.h5ad writes AnnData: groups x (TF, gene) pairs, one layer per statistic."
)
ACTIVITY_HELP = (
    "TF x group activity (sum of mean attribution over genes) and the top variable TFs per group.\n\n"
    "The top TFs follow upstream get_top_tfs: rank TFs by variance across groups, keep the top --var-cutoff "
    "share, z-score each across groups, list the --top highest per group. --out A.h5ad writes AnnData: groups "
    "x TFs, a zscore layer and the top TFs in uns. With one group (no --groupby) the matrix is written and the "
    "ranking skipped, as noted on stderr."
)
PLOT_HELP = (
    "Draw a dotplot or a heatmap of TF (or peak) attributions per group (PNG, PDF or SVG).\n\n"
    "TFs (peaks) are rows and every row keeps a readable label: the figure grows with the number of rows, and "
    "--top selects the most variable ones. An activity table (activity --out) is drawn as a heatmap."
)


def summarize(
    attr: list[str] = typer.Argument(..., help=_ATTR_HELP),
    data: Optional[Path] = _OPT["data"],
    groupby: Optional[str] = _OPT["groupby"],
    top: Optional[int] = typer.Option(None, "--top", min=1, show_default="all, file order",
                                      help="Keep the N TFs (peaks) of largest mean attribution per gene and group "
                                           "(largest first)."),
    out: str = typer.Option("-", "--out", "-o", help="Output .tsv or .csv (.gz compresses), .h5ad (AnnData), or "
                                                     "- for stdout."),
    overwrite: bool = _OPT["overwrite"],
    quiet: bool = _OPT["quiet"],
) -> None:
    """Upstream's tf_to_gene (peak_to_gene) table for one or many genes (see ``SUMMARIZE_HELP``)."""
    from ..downstream import summary as stats
    from ..downstream import tables_io
    from ..downstream.inputs import collect_attribution_files

    with reported():
        if data is not None and groupby is None:
            err("note: --data is not used without --groupby")
            data = None
        files = collect_attribution_files(attr)
        tables_io.check_table_output(out, overwrite, files + ([data] if data else []), h5ad=True)
        summary = stats.summarize(files, data, groupby, top)
        _notes(summary)
        tables_io.write_summary(summary, out)
        if not quiet:
            groups = f" x {summary.table[groupby].nunique()} groups" if groupby else ""
            err(f"summarized {len(summary.genes)} gene(s){groups}: {len(summary.table)} rows -> "
                 f"{'stdout' if out == '-' else out}")


def activity(
    inputs: list[str] = typer.Argument(..., help=_IN_HELP),
    data: Optional[Path] = _OPT["data"],
    groupby: Optional[str] = _OPT["groupby"],
    per_gene_top: Optional[int] = typer.Option(None, "--per-gene-top", min=1, show_default="every TF",
                                               help="Sum only each gene's N TFs of largest mean per group."),
    out: str = typer.Option("-", "--out", "-o", help="TF x group activity: .tsv/.csv, .h5ad (AnnData with the "
                                                     "z-scores and top TFs), or - for stdout."),
    top_out: Optional[str] = typer.Option(None, "--top-out", show_default="listed on stderr",
                                          help="Top variable TFs per group: .tsv/.csv, or -."),
    top: int = typer.Option(5, "--top", min=1, help="Top variable TFs listed per group."),
    var_cutoff: float = _OPT["var_cutoff"],
    overwrite: bool = _OPT["overwrite"],
    quiet: bool = _OPT["quiet"],
) -> None:
    """The TF x group activity matrix and upstream's get_top_tfs (see ``ACTIVITY_HELP``)."""
    from ..downstream import activity as act
    from ..downstream import tables_io

    with reported():
        if out == "-" and top_out == "-":
            raise UserError("--out and --top-out cannot both be stdout", "--top-out")
        tables_io.check_table_output(out, overwrite, h5ad=True)
        if top_out is not None:
            tables_io.check_table_output(top_out, overwrite)
            if top_out != "-" and Path(top_out).resolve() == Path(out).resolve():
                raise UserError("--out and --top-out name the same file", "--top-out")
        loaded = _load(inputs, data, groupby, "activity", per_gene_top)
        summary = loaded.summary
        act.require_tfs(summary)
        for path in (out, top_out):
            if path not in (None, "-") and any(Path(path).resolve() == s.resolve() for s in loaded.sources):
                raise UserError("output would overwrite an input file", path)
        matrix = act.activity_matrix(summary)
        best = None
        if matrix.shape[1] < 2:
            which = "all cells" if summary.groupby is None else f"{summary.groupby} = {list(matrix.columns)}"
            err(f"note: {matrix.shape[1]} group ({which}): no variance across groups to rank TFs by, so no top "
                f"TFs{' (--top-out is not written)' if top_out else ''}; the activity matrix is written"
                f"{'' if summary.groupby else ' (--groupby gives groups)'}")
        else:
            best = act.top_variable_tfs(matrix, top, var_cutoff)
        tables_io.write_activity(matrix, best, out, var_cutoff, summary.genes)
        if best is not None and top_out is not None:
            tables_io.write_table(best, top_out, index=True)
        elif best is not None and not quiet:
            err(f"top {len(best)} variable TFs per group (--var-cutoff {var_cutoff}):")
            for group in best.columns:
                err(f"  {group}: {', '.join(map(str, best[group]))}")
        if not quiet:
            err(f"activity of {matrix.shape[0]} TFs x {matrix.shape[1]} groups over {len(summary.genes)} "
                 f"gene(s) -> {'stdout' if out == '-' else out}")


def plot(
    inputs: list[str] = typer.Argument(..., help=_PLOT_IN_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Figure .png, .pdf or .svg."),
    kind: Kind = typer.Option("dotplot", "--kind", help="dotplot (colour = mean attribution, size = fraction of "
                                                        "cells > 0) or heatmap (TF activity, peak attribution)."),
    data: Optional[Path] = _OPT["data"],
    groupby: Optional[str] = _OPT["groupby"],
    top: Optional[int] = typer.Option(None, "--top", min=1, show_default="every row",
                                      help="Rows: each group's N top variable TFs (peaks), as activity lists "
                                           "them, each shown once: N to N x groups rows, the same in a dotplot "
                                           "and a heatmap."),
    var_cutoff: float = _OPT["var_cutoff"],
    zscore: bool = typer.Option(False, "--zscore", help="Heatmap: z-score each row across groups."),
    order: Optional[Order] = typer.Option(None, "--order", show_default="genome for peaks; else groups, or the top "
                                                                       "lists with --top",
                                          help="Rows: groups (by the group where a row stands out most), value "
                                               "(mean over groups, largest first), input, or genome (peaks, by "
                                               "chromosome and start)."),
    title: Optional[str] = typer.Option(None, "--title", show_default="gene(s) and groups", help="Figure title."),
    dpi: int = typer.Option(150, "--dpi", min=10, max=1200, help="Resolution of PNG output."),
    overwrite: bool = _OPT["overwrite"],
    quiet: bool = _OPT["quiet"],
) -> None:
    """A dotplot or heatmap of TF (or peak) attributions per group (see ``PLOT_HELP``)."""
    from ..downstream import plots
    from ..downstream.figure import activity_figure, attribution_figure, check_options

    with reported():
        check_options(plain(kind), zscore)
        plots.check_figure_output(out, overwrite)
        loaded = _load(inputs, data, groupby, "plot")
        if loaded.activity is not None:
            if plain(kind) != "heatmap":
                raise UserError("an activity table has no fraction of cells for the dot sizes: draw it with "
                                "--kind heatmap, or give the summary for a dotplot", loaded.source)
            drawn = activity_figure(loaded.activity, loaded.genes, top, var_cutoff, zscore, plain(order), title)
        else:
            drawn = attribution_figure(loaded.summary, plain(kind), top, var_cutoff, zscore, plain(order), title)
        for note in drawn.notes:
            err(f"note: {note}")
        plots.save_figure(drawn.figure, out, dpi)
        if not quiet:
            over = f" over {len(loaded.genes)} gene(s)" if loaded.genes else ""
            err(f"{plain(kind)} of {drawn.n_rows} {drawn.label}s x {drawn.n_groups} group(s){over} -> {out}")
