"""Figures of TF (or peak) attributions per group: a dotplot and a heatmap, drawn with matplotlib (imported lazily).

Figures are built on matplotlib's object API with the Agg canvas, so drawing never touches pyplot's global
state or the backend of a notebook. Everything is placed in inches: every row keeps a 0.15-inch pitch with a
7-point label, so labels stay readable at 300 TFs (the figure grows instead); the colour bar and the dot-size
legend stand side by side right of the grid; the title is one line (the first of the candidate titles that
fits the figure's width); and the figure is then cut to its content plus a small margin, so no part of the
canvas is left blank.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
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
TITLE_FONT = 11.0
MAX_DOT_PT = 9.5  # diameter of a dot for a fraction of 1, in points
MIN_DOT_AREA = 0.08  # share of the full area kept by a dot for a fraction of 0 (its colour stays visible)
CMAP = "RdBu_r"
MISSING = "0.8"  # a heatmap cell without a value (white is 0)
TOP_LABELS_ABOVE = 40  # rows from which group names are shown above the grid too
PAD = 0.1  # margin around the content, inches
SHOWN_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the dot-size legend
#: Text unhinted while a figure is laid out and saved: hinting changes the width of small text with the
#: resolution (by up to 9% at 7 points), so a layout measured at one dpi would not hold at another.
TEXT_RC = {"text.hinting": "no_hinting"}


def _unhinted(draw):
    """Run a figure function with :data:`TEXT_RC` in force."""
    import functools

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(TEXT_RC):
            return draw(*args, **kwargs)

    return wrapper


def genes_title(genes: list[str], listed: int = 4) -> str:
    """``GENE`` / ``A, B, C`` / ``12 genes (A, B, C, D, ...)`` for a title."""
    if len(genes) <= listed:
        return ", ".join(genes)
    return f"{len(genes)} genes ({', '.join(genes[:listed])}, ...)"


# --- row order -------------------------------------------------------------------------------------------

_PEAK = re.compile(r"^(?:chr)?([^:_\-\s]+)[:_\-](\d+)[_\-](\d+)$", re.IGNORECASE)
_CHROM_RANK = {**{str(i): i for i in range(1, 100)}, "X": 100, "Y": 101, "M": 102, "MT": 102}


def genomic_key(name: str) -> tuple:
    """A sort key placing peaks named ``chr1-1000-1500`` (or ``chr1:1000-1500``, ``chr1_1000_1500``; a
    ``" (gene)"`` suffix is ignored) by chromosome in natural order (1, 2, ..., 22, X, Y, M, then the others
    by name), start and end; names that are not peaks come last."""
    peak = str(name).split(" (", 1)[0].strip()
    m = _PEAK.match(peak)
    if not m:
        return (2, 0, "", 0, 0)
    chrom, start, end = m.group(1), int(m.group(2)), int(m.group(3))
    rank = _CHROM_RANK.get(chrom.upper())
    return (0, rank, "", start, end) if rank is not None else (1, 0, chrom, start, end)


def display_order(matrix: pd.DataFrame, how: str = "groups") -> list:
    """The row order of a figure (ties keep the matrix order).

    ``groups``: by the group where a TF's z-score across groups is highest, then by that z-score, so the
    figure reads as a diagonal (with one group, as ``value``); ``value``: by the mean over groups, largest
    first; ``input``: as given; ``genome``: peaks by chromosome, start and end (see :func:`genomic_key`).
    """
    if how not in ORDERS:
        raise UserError(f"unknown order {how!r}, choose from {', '.join(ORDERS)}", param="order")
    values = matrix.to_numpy(dtype=np.float64)
    if how == "input" or values.size == 0:
        return list(matrix.index)
    if how == "genome":
        return sorted(matrix.index, key=genomic_key)  # sorted is stable
    if how == "value" or values.shape[1] < 2:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row of NaN only: no mean
            key = np.nan_to_num(np.nanmean(values, axis=1), nan=-np.inf)
        return list(matrix.index[np.argsort(-key, kind="stable")])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with fewer than 2 values: no spread
        mean = np.nanmean(values, axis=1, keepdims=True)
        sd = np.nanstd(values, axis=1, ddof=1, keepdims=True)
        z = np.where(sd > 0, (values - mean) / sd, 0.0)
    z = np.nan_to_num(z, nan=-np.inf)
    best = np.argmax(z, axis=1)
    order = np.lexsort((-z[np.arange(len(z)), best], best))  # lexsort is stable
    return list(matrix.index[order])


# --- layout in inches ------------------------------------------------------------------------------------


class _Sheet:
    """A figure whose axes and texts are placed in inches from a top-left origin, then cut to its content."""

    def __init__(self, size: tuple[float, float]):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=size)
        FigureCanvasAgg(self.fig)
        self.renderer = self.fig.canvas.get_renderer()
        self._axes: list[tuple] = []  # (axes, x, y, w, h)
        self._texts: list[tuple] = []  # (text, x, y)
        self._origin = (0.0, 0.0)

    def axes(self, x: float, y: float, w: float, h: float):
        ax = self.fig.add_axes([0, 0, 1, 1])
        self._axes.append((ax, x, y, w, h))
        self._place()
        return ax

    def text(self, x: float, y: float, s: str, size: float, **kw):
        t = self.fig.text(0, 0, s, fontsize=size, ha="left", va="top", **kw)
        self._texts.append((t, x, y))
        self._place()
        return t

    def move(self, text, x: float, y: float) -> None:
        """Place a text of the sheet at (``x``, ``y``)."""
        self._texts = [(t, x, y) if t is text else (t, tx, ty) for t, tx, ty in self._texts]
        self._place()

    def extent(self, artist) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of an artist, in the sheet's inches."""
        box = artist.get_tightbbox(self.renderer)
        if artist is self.fig:  # a figure's box is in inches
            box = box.transformed(self.fig.dpi_scale_trans)
        return self._inches(box)

    def text_width(self, s: str, size: float) -> float:
        from matplotlib.font_manager import FontProperties

        width, _, _ = self.renderer.get_text_width_height_descent(s, FontProperties(size=size), ismath=False)
        return width / self.fig.dpi

    def _inches(self, box) -> tuple[float, float, float, float]:
        dpi, (_, h) = self.fig.dpi, self.fig.get_size_inches()
        ox, oy = self._origin
        return (box.x0 / dpi - ox, h - box.y1 / dpi - oy, box.x1 / dpi - ox, h - box.y0 / dpi - oy)

    def _place(self) -> None:
        w, h = self.fig.get_size_inches()
        ox, oy = self._origin
        for ax, x, y, aw, ah in self._axes:
            ax.set_position([(x + ox) / w, 1 - (y + oy + ah) / h, aw / w, ah / h])
        for t, x, y in self._texts:
            t.set_position(((x + ox) / w, 1 - (y + oy) / h))

    def finish(self, pad: float = PAD):
        """Cut the figure to its content plus ``pad`` on every side; returns the figure."""
        left, top, right, bottom = self.extent(self.fig)
        self._origin = (pad - left, pad - top)
        self.fig.set_size_inches(right - left + 2 * pad, bottom - top + 2 * pad)
        self._place()
        return self.fig


def _grid(matrix: pd.DataFrame, legend_h: float):
    """A sheet with the grid axes for ``matrix`` (rows x groups) and the layout around it."""
    rows, cols = list(matrix.index), list(matrix.columns)
    grid_w, grid_h = max(len(cols) * COL_IN, 0.6), max(len(rows), 1) * ROW_IN
    sheet = _Sheet((grid_w + 8, grid_h + legend_h + 3))  # a first size: finish() cuts it to the content
    widths = [sheet.text_width(str(c), GROUP_FONT) for c in cols]
    col_w = max(widths, default=0.0)
    rotate = any((a + b) / 2 > COL_IN - 0.05 for a, b in zip(widths, widths[1:]))  # neighbours would touch
    top_labels = len(rows) > TOP_LABELS_ABOVE  # a tall figure repeats the group names above the grid
    grid_top = 0.38 + ((col_w if rotate else 0.15) + 0.1 if top_labels else 0.0)
    ax = sheet.axes(0.0, grid_top, grid_w, grid_h)
    sheet.text(0.0, 0.0, "", TITLE_FONT)  # the title: the figure's first text, set when the rest is drawn
    return sheet, ax, rotate, top_labels, grid_top


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


def _row_label(matrix: pd.DataFrame) -> str:
    """The rows' axis label: ``TF``, or the matrix's index name (``peak``)."""
    name = matrix.index.name
    return "TF" if name in (None, "tf") else str(name)


def _norm(values: np.ndarray):
    from matplotlib.colors import Normalize

    finite = np.abs(values[np.isfinite(values)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return Normalize(-vmax, vmax)  # symmetric: white is 0


def _colorbar(sheet: _Sheet, mappable, x: float, top: float, grid_h: float, label: str) -> float:
    """A colour bar at (``x``, ``top``); returns the right edge of it and its labels."""
    cax = sheet.axes(x, top, 0.14, float(np.clip(grid_h, 0.8, 1.6)))
    bar = sheet.fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=GROUP_FONT)
    bar.ax.tick_params(labelsize=TF_FONT)
    return sheet.extent(cax)[2]


def _dot_area(f) -> np.ndarray:
    return MAX_DOT_PT ** 2 * (MIN_DOT_AREA + (1 - MIN_DOT_AREA) * np.asarray(f, dtype=np.float64))


def _size_legend(sheet: _Sheet, x: float, top: float) -> None:
    """The dot sizes of :data:`SHOWN_FRACTIONS`, under a two-line title, at (``x``, ``top``)."""
    title = sheet.text(x, top, "cells with\nattribution > 0", GROUP_FONT)
    title_h = sheet.extent(title)[3] - top + 0.08
    n = len(SHOWN_FRACTIONS)
    lax = sheet.axes(x, top + title_h, 0.75, n * 0.19)
    lax.scatter(np.zeros(n), np.arange(n), s=_dot_area(SHOWN_FRACTIONS), c="0.55", edgecolors="0.35",
                linewidths=0.3)
    for i, f in enumerate(SHOWN_FRACTIONS):
        lax.text(0.9, i, f"{f:.0%}", va="center", fontsize=TF_FONT)
    lax.set_xlim(-0.6, 2.6)
    lax.set_ylim(n - 0.5, -0.5)
    lax.axis("off")


def _title_and_note(sheet: _Sheet, ax, titles: str | Sequence[str], note: str | None) -> None:
    """The first title that fits the content's width on one line (the last one otherwise), above everything;
    ``note`` under the grid's labels."""
    candidates = [titles] if isinstance(titles, str) else list(titles)
    left, _, right, bottom = sheet.extent(sheet.fig)
    fits = [t for t in candidates if sheet.text_width(t, TITLE_FONT) <= right - left]
    title = sheet.fig.texts[0]
    title.set_text((fits or candidates[-1:])[0])
    sheet.move(title, left, 0.0)
    if note:
        sheet.text(left, sheet.extent(ax)[3] + 0.08, note, TF_FONT, color="0.3")


@_unhinted
def dotplot(mean: pd.DataFrame, frac: pd.DataFrame, title: str | Sequence[str],
            color_label: str = "mean attribution", xlabel: str | None = None, note: str | None = None):
    """Dots per TF or peak (rows) and group (columns): colour = ``mean``, area = ``frac`` (fraction of cells with a
    positive attribution; a fraction of 0 keeps a small dot so that its colour shows). NaN = no dot.

    ``title``: a title, or candidates from the longest to the shortest (the first that fits is used);
    ``note``: a line under the grid (what a missing dot means). Returns a matplotlib ``Figure``.
    """
    sheet, ax, rotate, top_labels, grid_top = _grid(mean, 1.7)
    rows, cols, values = list(mean.index), list(mean.columns), mean.to_numpy(dtype=np.float64)
    fractions = frac.reindex(index=mean.index, columns=mean.columns).to_numpy(dtype=np.float64)
    yy, xx = np.nonzero(np.isfinite(values) & np.isfinite(fractions))
    points = ax.scatter(xx, yy, s=_dot_area(fractions[yy, xx]), c=values[yy, xx], cmap=CMAP, norm=_norm(values),
                        edgecolors="0.35", linewidths=0.3, zorder=3)
    ax.grid(True, color="0.92", linewidth=0.5, zorder=0)
    ax.set_axisbelow(True)
    _axes_labels(ax, rows, cols, rotate, xlabel, top_labels, _row_label(mean))
    grid_right = sheet.extent(ax)[2]
    right = _colorbar(sheet, points, grid_right + 0.25, grid_top, len(rows) * ROW_IN, color_label)
    _size_legend(sheet, right + 0.15, grid_top)
    _title_and_note(sheet, ax, title, note)
    return sheet.finish()


@_unhinted
def heatmap(matrix: pd.DataFrame, title: str | Sequence[str], color_label: str = "TF activity",
            xlabel: str | None = None, note: str | None = None):
    """TF or peak (rows) x group (columns) heatmap with a colour scale symmetric around 0; NaN cells are grey.
    ``title`` and ``note`` as for :func:`dotplot`. Returns a ``Figure``."""
    sheet, ax, rotate, top_labels, grid_top = _grid(matrix, 1.2)
    rows, cols, values = list(matrix.index), list(matrix.columns), matrix.to_numpy(dtype=np.float64)
    mesh = ax.pcolormesh(np.arange(len(cols) + 1) - 0.5, np.arange(len(rows) + 1) - 0.5,
                         np.ma.masked_invalid(values), cmap=CMAP, norm=_norm(values), shading="flat",
                         edgecolors="face", linewidth=0, antialiased=False)
    ax.set_facecolor(MISSING)
    _axes_labels(ax, rows, cols, rotate, xlabel, top_labels, _row_label(matrix))
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    _colorbar(sheet, mesh, sheet.extent(ax)[2] + 0.25, grid_top, len(rows) * ROW_IN, color_label)
    _title_and_note(sheet, ax, title, note)
    return sheet.finish()


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
    with atomic_output(out) as tmp, matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none", **TEXT_RC}):
        fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white", metadata=_metadata(fmt))


def _metadata(fmt: str) -> dict:
    from .._version import __version__

    creator = f"cell2net-attr {__version__}"
    # fixed dates keep PDF/SVG outputs byte-stable between runs
    return {"png": {"Software": creator}, "pdf": {"Creator": creator, "CreationDate": None},
            "svg": {"Creator": creator, "Date": None}}[fmt]
