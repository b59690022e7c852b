"""Figures of TF (or peak) attributions per group: a dotplot and a heatmap, drawn with matplotlib (imported lazily).

Figures are built on matplotlib's object API with the Agg canvas, so drawing never touches pyplot's global
state or the backend of a notebook. The layout is set in inches from the number of TFs and groups: every
TF keeps a 0.15-inch row with a 7-point label, so labels stay readable at 300 TFs (the figure grows
instead), and the colour bar and the dot-size legend sit at the top right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..io.writers import atomic_output, check_output_path
from .choices import ORDERS

FORMATS = (".png", ".pdf", ".svg")
ROW_IN = 0.15  # inches per TF row
COL_IN = 0.34  # inches per group column
TF_FONT = 7.0  # points
GROUP_FONT = 8.0
MAX_DOT_PT = 9.5  # diameter of a dot for a fraction of 1, in points
MIN_DOT_AREA = 0.08  # share of the full area kept by a dot for a fraction of 0 (its colour stays visible)
CMAP = "RdBu_r"
TITLE_CHAR_IN = 0.095  # width of a title character (11 pt), a generous estimate
TOP_LABELS_ABOVE = 40  # rows from which group names are shown above the grid too


def genes_title(genes: list[str], listed: int = 4) -> str:
    """``GENE`` / ``A, B, C`` / ``12 genes (A, B, C, D, ...)`` for a title."""
    if len(genes) <= listed:
        return ", ".join(genes)
    return f"{len(genes)} genes ({', '.join(genes[:listed])}, ...)"




def display_order(matrix: pd.DataFrame, how: str = "groups") -> list:
    """The row order of a figure (ties keep the matrix order).

    ``groups``: by the group where a TF's z-score across groups is highest, then by that z-score, so the
    figure reads as a diagonal (with one group, as ``value``); ``value``: by the mean over groups, largest
    first; ``input``: as given.
    """
    if how not in ORDERS:
        raise UserError(f"unknown order {how!r}, choose from {', '.join(ORDERS)}", param="order")
    values = matrix.to_numpy(dtype=np.float64)
    if how == "input" or values.size == 0:
        return list(matrix.index)
    if how == "value" or values.shape[1] < 2:
        with np.errstate(invalid="ignore"):
            key = np.nan_to_num(np.nanmean(values, axis=1), nan=-np.inf)
        return list(matrix.index[np.argsort(-key, kind="stable")])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(values, axis=1, keepdims=True)
        sd = np.nanstd(values, axis=1, ddof=1, keepdims=True)
        z = np.where(sd > 0, (values - mean) / sd, 0.0)
    z = np.nan_to_num(z, nan=-np.inf)
    best = np.argmax(z, axis=1)
    order = np.lexsort((-z[np.arange(len(z)), best], best))  # lexsort is stable
    return list(matrix.index[order])


def _layout(n_rows: int, n_cols: int, row_labels, col_labels, legend_h: float, title: str):
    """Figure size, the grid's rectangle (figure fractions) and the title wrapped to the figure's width."""
    import textwrap

    left = 0.3 + 0.058 * max((len(str(s)) for s in row_labels), default=4)
    longest = max((len(str(s)) for s in col_labels), default=1)
    rotate = 0.075 * longest > COL_IN
    labels_h = 0.065 * longest if rotate else 0.15
    bottom = 0.4 + labels_h
    top_labels = n_rows > TOP_LABELS_ABOVE  # a tall figure repeats the group names above the grid
    right, gap = 1.55, 0.35
    grid_w, grid_h = max(n_cols * COL_IN, 0.8), n_rows * ROW_IN
    width = left + grid_w + gap + right
    lines = textwrap.wrap(title, max(20, int((width - 0.3) / TITLE_CHAR_IN))) or [""]
    top = 0.55 + 0.2 * len(lines) + (labels_h if top_labels else 0.0)
    height = max(top + grid_h + bottom, top + legend_h + 0.3)
    grid = [left / width, 1 - (top + grid_h) / height, grid_w / width, grid_h / height]
    side_x = (left + grid_w + gap) / width
    return (width, height), grid, side_x, rotate, top, top_labels, "\n".join(lines)


def _start(matrix: pd.DataFrame, legend_h: float, title: str):
    """A new figure laid out for ``matrix`` (TF rows, group columns), its grid axes and the layout."""
    rows, cols = list(matrix.index), list(matrix.columns)
    size, grid, side_x, rotate, top, top_labels, title = _layout(len(rows), len(cols), rows, cols, legend_h, title)
    fig = _new_figure(size)
    return fig, fig.add_axes(grid), size, side_x, rotate, top, top_labels, title


def _new_figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _norm(values: np.ndarray):
    from matplotlib.colors import Normalize

    finite = np.abs(values[np.isfinite(values)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return Normalize(-vmax, vmax)  # symmetric: white is 0


def _row_label(matrix: pd.DataFrame) -> str:
    """The rows' axis label: ``TF``, or the matrix's index name (``peak``)."""
    name = matrix.index.name
    return "TF" if name in (None, "tf") else str(name)


def _axes_labels(ax, rows: list, cols: list, rotate: bool, xlabel: str | None, top_labels: bool,
                 ylabel: str = "TF") -> None:
    ax.set_yticks(np.arange(len(rows)), [str(r) for r in rows], fontsize=TF_FONT)
    ax.set_xticks(np.arange(len(cols)), [str(c) for c in cols], fontsize=GROUP_FONT,
                  rotation=90 if rotate else 0)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first TF on top
    ax.tick_params(length=2, pad=2)
    if top_labels:
        ax.tick_params(axis="x", top=True, labeltop=True)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=GROUP_FONT + 1)
    ax.set_ylabel(ylabel, fontsize=GROUP_FONT + 1)


def _colorbar(fig, mappable, side_x: float, top_in: float, height: float, label: str) -> None:
    h_in = 1.5
    cax = fig.add_axes([side_x, 1 - (top_in + h_in) / height, 0.14 / fig.get_figwidth(), h_in / height])
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=GROUP_FONT)
    bar.ax.tick_params(labelsize=TF_FONT)


def dotplot(mean: pd.DataFrame, frac: pd.DataFrame, title: str, color_label: str = "mean attribution",
            xlabel: str | None = None):
    """Dots per TF or peak (rows) and group (columns): colour = ``mean``, area = ``frac`` (fraction of cells with a
    positive attribution; a fraction of 0 keeps a small dot so that its colour shows). NaN = no dot.

    Returns a matplotlib ``Figure``.
    """
    fig, ax, (w, h), side_x, rotate, top, top_labels, title = _start(mean, 3.4, title)
    rows, cols, values = list(mean.index), list(mean.columns), mean.to_numpy(dtype=np.float64)
    fractions = frac.reindex(index=mean.index, columns=mean.columns).to_numpy(dtype=np.float64)
    yy, xx = np.nonzero(np.isfinite(values) & np.isfinite(fractions))
    full = MAX_DOT_PT ** 2

    def area(f):
        return full * (MIN_DOT_AREA + (1 - MIN_DOT_AREA) * np.asarray(f))

    norm = _norm(values)
    points = ax.scatter(xx, yy, s=area(fractions[yy, xx]), c=values[yy, xx], cmap=CMAP, norm=norm,
                        edgecolors="0.35", linewidths=0.3, zorder=3)
    ax.grid(True, color="0.92", linewidth=0.5, zorder=0)
    ax.set_axisbelow(True)
    _axes_labels(ax, rows, cols, rotate, xlabel, top_labels, _row_label(mean))
    fig.suptitle(title, fontsize=GROUP_FONT + 3, x=0.15 / w, y=1 - 0.2 / h, ha="left", va="top")
    _colorbar(fig, points, side_x, top, h, color_label)

    # size legend under the colour bar
    leg_top = top + 1.5 + 0.55
    lax = fig.add_axes([side_x, 1 - (leg_top + 1.3) / h, 1.1 / w, 1.3 / h])
    shown = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    lax.scatter(np.zeros(len(shown)), np.arange(len(shown)), s=area(shown), c="0.55", edgecolors="0.35",
                linewidths=0.3)
    for i, f in enumerate(shown):
        lax.text(0.7, i, f"{f:.0%}", va="center", fontsize=TF_FONT)
    lax.set_xlim(-0.8, 2.5)
    lax.set_ylim(len(shown) - 0.4, -0.9)
    lax.set_title("cells with\nattribution > 0", fontsize=GROUP_FONT, loc="left")
    lax.axis("off")
    return fig


def heatmap(matrix: pd.DataFrame, title: str, color_label: str = "TF activity", xlabel: str | None = None):
    """TF or peak (rows) x group (columns) heatmap with a colour scale symmetric around 0. Returns a ``Figure``."""
    fig, ax, (w, h), side_x, rotate, top, top_labels, title = _start(matrix, 1.8, title)
    rows, cols, values = list(matrix.index), list(matrix.columns), matrix.to_numpy(dtype=np.float64)
    mesh = ax.pcolormesh(np.arange(len(cols) + 1) - 0.5, np.arange(len(rows) + 1) - 0.5,
                         np.ma.masked_invalid(values), cmap=CMAP, norm=_norm(values), shading="flat",
                         edgecolors="face", linewidth=0, antialiased=False)
    _axes_labels(ax, rows, cols, rotate, xlabel, top_labels, _row_label(matrix))
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    fig.suptitle(title, fontsize=GROUP_FONT + 3, x=0.15 / w, y=1 - 0.2 / h, ha="left", va="top")
    _colorbar(fig, mesh, side_x, top, h, color_label)
    return fig


def check_figure_output(out: str | Path, overwrite: bool) -> Path:
    """Validate a figure path (suffix .png, .pdf or .svg; directory present; no clobbering)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"unknown figure format {out.suffix!r}: use {', '.join(FORMATS)}", out)
    check_output_path(out, overwrite)
    return out


def save_figure(fig, out: str | Path, dpi: int = 150) -> None:
    """Write ``fig`` in the format of ``out``'s suffix, atomically (text stays text in PDF and SVG)."""
    import matplotlib

    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    with atomic_output(out) as tmp, matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):
        fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white", metadata=_metadata(fmt))


def _metadata(fmt: str) -> dict:
    from .._version import __version__

    creator = f"cell2net-attr {__version__}"
    # fixed dates keep PDF/SVG outputs byte-stable between runs
    return {"png": {"Software": creator}, "pdf": {"Creator": creator, "CreationDate": None},
            "svg": {"Creator": creator, "Date": None}}[fmt]
