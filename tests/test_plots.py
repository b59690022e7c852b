"""plot: files are produced in every format, labels stay readable at 300 TFs, errors are one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cell2net_attr.cli import app
from cell2net_attr.downstream import activity, plots, summary

from .conftest import write_attr, write_h5mu


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two genes, 30 cells in three cell types."""
    d = tmp_path_factory.mktemp("plots")
    rng = np.random.default_rng(1)
    cells = [f"c{i}" for i in range(30)]
    obs = pd.DataFrame({"celltype": pd.Categorical(rng.choice(["B", "Mono", "T"], 30))}, index=cells)
    data = write_h5mu(d / "data.h5mu", obs)
    for gene, tfs in (("GENE_A", ["GATA1", "SPI1", "CEBPA", "TCF7"]), ("GENE_B", ["SPI1", "PAX5", "EBF1"])):
        write_attr(d / f"{gene}.h5", gene, cells, tfs, rng.normal(size=(30, len(tfs))))
    r = invoke(["summarize", d, "--data", data, "--groupby", "celltype", "--out", d / "summary.tsv", "-q"])
    assert r.exit_code == 0, r.output
    return d


def big_summary(n_tfs=300, groups=("B cells", "CD14 Monocytes", "NK", "CD4 T", "CD8 T", "pDC")) -> summary.Summary:
    rng = np.random.default_rng(2)
    tfs = [f"{p}{i}" for i, p in zip(range(n_tfs), np.resize(["ZNF", "NKX2-", "FOXP", "CEBPA_", "TCF7L"], n_tfs))]
    rows = [(t, "G", g, v, abs(v), 40, f) for g in groups
            for t, v, f in zip(tfs, rng.normal(size=n_tfs), rng.random(n_tfs))]
    table = pd.DataFrame(rows, columns=["tf", "gene", "celltype", "mean_attr", "std_attr", "n_cells", "frac_pos"])
    table["celltype"] = pd.Categorical(table["celltype"], categories=list(groups))
    return summary.Summary(table, "celltype", ["G"])


def test_formats_are_written(small):
    for name, kind, magic in (("d.png", "dotplot", b"\x89PNG"), ("h.pdf", "heatmap", b"%PDF"),
                              ("d.svg", "dotplot", b"<?xml")):
        r = invoke(["plot", small / "summary.tsv", "--kind", kind, "--out", small / name, "--dpi", "60"])
        assert r.exit_code == 0, r.output
        assert r.stdout == "" and f"{kind} of 6 TFs x 3 group(s) over 2 gene(s)" in r.stderr
        assert (small / name).read_bytes()[:5].startswith(magic)
    svg = (small / "d.svg").read_text()
    for text in ("GENE_A, GENE_B: TF attribution by", "GATA1", "EBF1", "Mono", "mean attribution"):
        assert text in svg  # text stays text (the title is wrapped to the figure's width)
    assert not list(small.glob(".*partial"))


def test_from_attribution_files_with_top(small):
    out = small / "top.png"
    r = invoke(["plot", small / "GENE_A.h5", small / "GENE_B.h5", "--data", small / "data.h5mu", "--groupby",
                "celltype", "--kind", "heatmap", "--zscore", "--top", "1", "--out", out, "--dpi", "60"])
    assert r.exit_code == 0, r.output
    from matplotlib.image import imread

    assert imread(out).shape[2] in (3, 4)
    s = summary.summarize([small / "GENE_A.h5", small / "GENE_B.h5"], small / "data.h5mu", "celltype")
    best = activity.top_variable_tfs(activity.activity_matrix(s), 1, 0.5)
    n = len(set(best.to_numpy().ravel()))
    assert f"heatmap of {n} TFs x 3 group(s)" in r.stderr


def _label_boxes(fig, axis="y"):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [lab for lab in labels if lab.get_text()], [lab.get_window_extent(renderer) for lab in labels
                                                      if lab.get_text()]


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
def test_300_tf_labels_are_all_shown_and_do_not_overlap(kind):
    summary = big_summary()
    mean, frac = activity.pooled_matrices(summary)
    if kind == "dotplot":
        fig = plots.dotplot(mean, frac, "G: TF attribution by celltype", xlabel="celltype")
    else:
        fig = plots.heatmap(activity.activity_matrix(summary), "G: TF activity by celltype", xlabel="celltype")
    fig.set_dpi(72)
    labels, boxes = _label_boxes(fig)
    assert [lab.get_text() for lab in labels] == list(mean.index)  # every TF labelled, in order
    assert min(lab.get_fontsize() for lab in labels) >= 7
    fig_box = fig.bbox
    for a, b in zip(boxes, boxes[1:]):
        assert a.y0 >= b.y1 or b.y0 >= a.y1  # one label's box never overlaps the next one's
    for box in boxes:
        assert box.x0 >= 0 and box.y0 >= 0 and box.y1 <= fig_box.y1  # nothing cut off
    _, xboxes = _label_boxes(fig, "x")  # group names (shown below and above the tall grid)
    assert all(b.y0 >= 0 and b.y1 <= fig_box.y1 for b in xboxes)
    title = fig.texts[0].get_window_extent(fig.canvas.get_renderer())
    assert title.y1 <= fig_box.y1 and title.x0 >= 0 and title.x1 <= fig_box.x1
    # the rows keep their pitch: the figure grows with the number of TFs
    assert fig.get_figheight() >= 300 * plots.ROW_IN
    assert len(fig.axes) >= 2  # the grid and the colour bar


def test_display_order():
    m = pd.DataFrame({"a": [1.0, 0.0, 5.0, 2.0], "b": [0.0, 1.0, 5.0, 1.0]}, index=["t1", "t2", "t3", "t4"])
    assert plots.display_order(m, "input") == ["t1", "t2", "t3", "t4"]
    assert plots.display_order(m, "value") == ["t3", "t4", "t1", "t2"]
    # t3 is constant (z = 0 everywhere: group a, tie kept in order), t1 and t4 peak in a, t2 in b
    assert plots.display_order(m, "groups") == ["t1", "t4", "t3", "t2"]


@pytest.mark.parametrize("args, message", [
    (["--out", "{d}/x.jpg"], "unknown figure format"),
    (["--out", "{d}/d.png"], "--overwrite"),
    (["--out", "{d}/y.png", "--zscore"], "only the heatmap"),
    (["--out", "{d}/y.png", "--kind", "violin"], "'violin' is not one of 'dotplot', 'heatmap'"),
    (["--out", "{d}/y.png", "--order", "random"], "'random' is not one of 'groups', 'value', 'input'"),
    (["--out", "{d}/y.png", "--dpi", "5"], "'--dpi': Input should be greater than or equal to 10"),
    (["--out", "{d}/y.png", "--dpi", "5000"], "'--dpi': Input should be less than or equal to 1200"),
    (["--out", "{d}/y.png", "--top", "0"], "--top"),
    (["--out", "{d}/nodir/y.png"], "output directory does not exist"),
])
def test_plot_errors(small, args, message):
    if not (small / "d.png").exists():
        (small / "d.png").write_bytes(b"")
    r = invoke(["plot", small / "summary.tsv", *[a.format(d=small) for a in args]])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().startswith("error: ") and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (small / "y.png").exists()


def test_matplotlib_is_imported_lazily():
    code = "import sys, cell2net_attr.cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
