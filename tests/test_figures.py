"""How the figures look: cut to their content, as tall as their rows, a one-line title that fits, legends for
colour and dot size, missing values explained, --top meaning the same rows in both kinds, peaks in genome order.
Each figure is drawn to PNG as the command writes it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cell2net_attr.downstream import activity, figure, plots, summary, tables_io

from .conftest import invoke, write_peak_attr

GROUPS = ["B cells", "CD14 Monocytes", "NK", "CD4 T"]


def tf_summary(n_tfs: int, genes=("GATA1",), groups=GROUPS, seed=0, drop=0.0) -> summary.Summary:
    """A TF summary of ``n_tfs`` TFs per gene (``drop``: share of rows left out, as summarize --top does)."""
    rng = np.random.default_rng(seed)
    rows = [(f"TF{t}", g, grp, rng.normal(), 0.1, 30, rng.random()) for g in genes for grp in groups
            for t in range(n_tfs)]
    table = pd.DataFrame(rows, columns=["tf", "gene", "celltype", "mean_attr", "std_attr", "n_cells", "frac_pos"])
    if drop:
        table = table[rng.random(len(table)) >= drop].reset_index(drop=True)
    table["celltype"] = pd.Categorical(table["celltype"], categories=list(groups))
    return summary.Summary(table, "celltype", list(genes))


def png(fig, path, dpi=100) -> np.ndarray:
    from matplotlib.image import imread

    plots.save_figure(fig, path, dpi)
    return imread(path)


def content_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) margins in pixels: rows and columns that are all white."""
    ink = (image[..., :3] < 0.98).any(axis=2)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return cols[0], rows[0], image.shape[1] - 1 - cols[-1], image.shape[0] - 1 - rows[-1]


def title_of(fig):
    return fig.texts[0]


def extent(fig, artist):
    return artist.get_window_extent(fig.canvas.get_renderer()) if hasattr(artist, "get_text") else \
        artist.get_tightbbox(fig.canvas.get_renderer())


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
@pytest.mark.parametrize("n_tfs", [3, 12, 60])
def test_the_canvas_is_cut_to_the_content(kind, n_tfs, tmp_path):
    fig = figure.attribution_figure(tf_summary(n_tfs), kind).figure
    image = png(fig, tmp_path / "f.png")
    margins = content_box(image)
    assert max(margins) <= 0.15 * 100, margins  # PAD (0.1 in) and no more, on every side
    assert min(margins) >= 0.05 * 100, margins  # and nothing touches the edge


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
def test_the_height_follows_the_rows(kind):
    heights, widths = {}, {}
    for n in (12, 24, 36):
        fig = figure.attribution_figure(tf_summary(n), kind, order="input").figure
        heights[n], widths[n] = fig.get_figheight(), fig.get_figwidth()
    for a, b in ((12, 24), (24, 36)):
        assert heights[b] - heights[a] == pytest.approx((b - a) * plots.ROW_IN, abs=0.02)  # rows only
    assert max(widths.values()) - min(widths.values()) < 0.1
    short = figure.attribution_figure(tf_summary(12, groups=["B", "Mono", "NK", "T"]), kind).figure
    assert short.get_figheight() - 12 * plots.ROW_IN < 1.2  # title, group names, axis label and margins


def test_a_figure_of_few_rows_is_not_tall():
    for kind in ("dotplot", "heatmap"):
        fig = figure.attribution_figure(tf_summary(2), kind).figure
        assert fig.get_figheight() < 2.6 and fig.get_figwidth() < 6


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
@pytest.mark.parametrize("genes", [("GATA1",), tuple(f"GENE_{c}" for c in "ABCDEFGH")])
def test_the_title_is_one_line_within_the_content(kind, genes):
    fig = figure.attribution_figure(tf_summary(10, genes), kind).figure
    title = title_of(fig)
    assert "\n" not in title.get_text() and "celltype" in title.get_text()
    if len(genes) == 1:
        assert title.get_text().startswith("GATA1: ")
    fig.canvas.draw()
    box = extent(fig, title)
    rest = [extent(fig, ax).x1 for ax in fig.axes]
    assert box.x1 <= max(rest) + 1  # the title does not widen the figure
    assert box.x0 >= 0 and box.y1 <= fig.bbox.y1


def test_a_long_title_of_the_user_is_kept_on_one_line(tmp_path):
    text = "GATA1 in the bone marrow atlas: TF attribution per annotated cell type, 12 donors, 2 batches"
    fig = figure.attribution_figure(tf_summary(5), "dotplot", title=text).figure
    assert title_of(fig).get_text() == text
    image = png(fig, tmp_path / "t.png")
    assert max(content_box(image)) <= 15  # the figure widened to hold it, and no more


def test_legends_for_colour_and_dot_size(tmp_path):
    fig = figure.attribution_figure(tf_summary(8), "dotplot").figure
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
    assert {"0%", "50%", "100%"} <= set(texts) and any("attribution > 0" in t for t in texts)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "mean attribution" in labels  # the colour bar
    heat = figure.attribution_figure(tf_summary(8), "heatmap", zscore=True).figure
    assert any("z-score" in ax.get_ylabel() for ax in heat.axes)
    for f in (fig, heat):
        png(f, tmp_path / "l.png")
        f.canvas.draw()
        boxes = [extent(f, ax) for ax in f.axes if ax.get_visible()]
        for a in range(len(boxes)):  # grid, colour bar and size legend side by side, none over another
            for b in range(a + 1, len(boxes)):
                assert boxes[a].x1 <= boxes[b].x0 + 1 or boxes[b].x1 <= boxes[a].x0 + 1


def test_long_group_names_turn_and_stay_apart():
    groups = ["CD14+ classical monocytes", "B", "natural killer cells", "plasmacytoid DC"]
    fig = figure.attribution_figure(tf_summary(6, groups=groups), "heatmap").figure
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert all(t.get_rotation() == 90 for t in ticks)
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ticks]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    assert all(b.y0 >= 0 for b in boxes)
    short = figure.attribution_figure(tf_summary(6, groups=["B", "Mono", "NK", "T"]), "heatmap").figure
    assert all(t.get_rotation() == 0 for t in short.axes[0].get_xticklabels())


def test_missing_values_are_explained(tmp_path):
    cut = tf_summary(15, genes=("A", "B"), drop=0.4)  # as after summarize --top
    dots = figure.attribution_figure(cut, "dotplot").figure
    notes = [t.get_text() for t in dots.texts if t.get_text().startswith("no dot:")]
    assert len(notes) == 1 and "summarize --top" in notes[0]
    png(dots, tmp_path / "cut.png")
    whole = figure.attribution_figure(tf_summary(15), "dotplot").figure
    assert not any("no dot" in t.get_text() for t in whole.texts)


@pytest.mark.parametrize("top", [1, 2, 5])
def test_top_means_the_same_rows_in_both_kinds(top):
    s = tf_summary(30, genes=("A", "B", "C"), seed=3)
    lists = activity.top_variable_tfs(activity.activity_matrix(s), top, 0.5)
    union = list(dict.fromkeys(lists.to_numpy().T.ravel()))
    drawn = {}
    for kind, zscore in (("dotplot", False), ("heatmap", False), ("heatmap", True)):
        d = figure.attribution_figure(s, kind, top=top, zscore=zscore)
        drawn[(kind, zscore)] = [t.get_text() for t in d.figure.axes[0].get_yticklabels()]
        assert d.n_rows == len(drawn[(kind, zscore)])
    assert all(rows == union for rows in drawn.values())  # the top lists, group after group
    assert top <= len(union) <= top * len(GROUPS)


def test_top_on_the_command_line_reports_the_same_count(tmp_path):
    s = tf_summary(30, genes=("A", "B"), seed=4)
    tables_io.write_table(s.table, tmp_path / "s.tsv")
    counts = set()
    for kind in ("dotplot", "heatmap"):
        r = invoke(["plot", tmp_path / "s.tsv", "--kind", kind, "--top", "5", "--out", tmp_path / f"{kind}.png"])
        assert r.exit_code == 0, r.output
        counts.add(r.stderr.split(f"{kind} of ")[1].split(" TFs")[0])
    assert len(counts) == 1


def test_genomic_key_orders_chromosomes_naturally():
    names = ["chr10-100-200", "chrX-5-9", "chr2-300-400 (G2)", "chr2:50-90", "chrM-1-2", "chr1_7_9",
             "scaffold_7-1-5", "chrY-3-4", "oddname", "chr2-300-350"]
    assert sorted(names, key=plots.genomic_key) == [
        "chr1_7_9", "chr2:50-90", "chr2-300-350", "chr2-300-400 (G2)", "chr10-100-200", "chrX-5-9", "chrY-3-4",
        "chrM-1-2", "scaffold_7-1-5", "oddname"]


def test_a_peak_figure_of_several_genes_is_in_genome_order(tmp_path):
    rng = np.random.default_rng(8)
    cells = [f"c{i}" for i in range(20)]
    files = []
    for gene, peaks in (("G1", ["chr10-500-900", "chr2-100-400", "chr10-50-90"]),
                        ("G2", ["chrX-10-20", "chr2-100-400", "chr1-7000-7500"])):
        files.append(write_peak_attr(tmp_path / f"{gene}.h5", gene, cells, peaks, rng.normal(size=(20, 3))))
    s = summary.summarize(files)
    want = ["chr1-7000-7500 (G2)", "chr2-100-400 (G1)", "chr2-100-400 (G2)", "chr10-50-90 (G1)",
            "chr10-500-900 (G1)", "chrX-10-20 (G2)"]
    for kind in ("dotplot", "heatmap"):
        d = figure.attribution_figure(s, kind)
        assert [t.get_text() for t in d.figure.axes[0].get_yticklabels()] == want
        png(d.figure, tmp_path / f"{kind}.png")
    assert figure.attribution_figure(s, "heatmap", order="input").figure.axes[0].get_yticklabels()[0].get_text() \
        == "chr10-500-900 (G1)"
    with pytest.raises(Exception, match="genome order is for peaks"):
        figure.attribution_figure(tf_summary(3), "heatmap", order="genome")
