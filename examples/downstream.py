"""From attributions to TF activity per cell type, on synthetic demo data: run-many -> summarize -> activity -> plot.

Builds a small atlas (8 genes, 600 cells, 60 TFs, a ``celltype`` column) in demo-out/downstream/, in which
each cell type over-expresses three TFs (so that the figures have something to find), then runs the real
command line on it:

1. ``run-many``  attributions for every gene          -> attr/<gene>.h5
2. ``summarize`` upstream tf_to_gene per cell type     -> summary.tsv
3. ``activity``  TF x cell type activity, top TFs      -> activity.tsv, top_tfs.tsv
4. ``plot``      a dotplot and a heatmap               -> dotplot.png, activity_heatmap.png
5. AnnData for scanpy                                  -> summary.h5ad, activity.h5ad
6. peaks: ``run-many --target peaks --format h5ad``, then ``summarize`` (upstream peak_to_gene) and ``plot``,
   grouped by the ``celltype`` the .h5ad outputs carry  -> peaks/, peak_summary.tsv, peaks_GENE_A.png
   (``examples/scanpy_plots.py`` draws 5 with scanpy.)

Usage: ``python examples/downstream.py [--docs DIR]`` (``--docs`` also copies the heatmap into DIR).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from cell2net_attr.synthetic import GeneSpec, make_gene_models

OUT = Path("demo-out") / "downstream"
CLI = [sys.executable, "-m", "cell2net_attr"]
MARKERS_PER_TYPE = 3


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    print("$ cell2net-attr " + " ".join(args[len(CLI):]), file=sys.stderr, flush=True)
    return subprocess.run(args, check=True, text=True, **kw)


def over_express(data: Path, seed: int = 0) -> dict[str, list[str]]:
    """Raise the counts of a few TFs in the cells of each cell type (rewrites ``data``); returns them."""
    import mudata as md
    import scipy.sparse as sp

    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(data)
    rna = mdata.mod["rna"]
    tfs = [t for t in rna.var_names if t.startswith("TF")]
    rng = np.random.default_rng(seed)
    picked = rng.choice(tfs, size=MARKERS_PER_TYPE * 4, replace=False)
    counts = rna.layers["counts"].toarray()
    celltype = mdata.obs["celltype"].to_numpy()
    markers = {}
    for k, cell_type in enumerate(mdata.obs["celltype"].cat.categories):
        markers[str(cell_type)] = [str(t) for t in picked[k * MARKERS_PER_TYPE:(k + 1) * MARKERS_PER_TYPE]]
        cols = rna.var_names.get_indexer(markers[str(cell_type)])
        rows = np.flatnonzero(celltype == cell_type)
        counts[np.ix_(rows, cols)] = counts[np.ix_(rows, cols)] * 3 + rng.poisson(6, (len(rows), len(cols)))
    rna.layers["counts"] = sp.csr_matrix(counts.astype(np.float32))
    rna.X = rna.layers["counts"].copy()
    mdata.write_h5mu(str(data))
    return markers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, help="also copy the heatmap into this directory")
    args = parser.parse_args()

    shutil.rmtree(OUT, ignore_errors=True)
    genes = [GeneSpec(f"GENE_{c}", 6 + 2 * i, 14 + 3 * i) for i, c in enumerate("ABCDEFGH")]
    data, _ = make_gene_models(OUT, genes, n_cells=600, n_tfs_total=60, n_covariates=2, seed=11)
    markers = over_express(data)
    print(f"built {data}: {len(genes)} genes, 600 cells; over-expressed TFs per cell type: {markers}",
          file=sys.stderr)

    attr, data_s = OUT / "attr", str(data)
    sh(CLI + ["run-many", str(OUT / "models"), data_s, "--out-dir", str(attr), "--covariates", "cov0,cov1", "-q"])
    sh(CLI + ["summarize", str(attr), "--data", data_s, "--groupby", "celltype", "--out", str(OUT / "summary.tsv")])
    # the same table, top 2 TFs per gene and cell type, straight into a pipeline
    top = sh(CLI + ["summarize", str(attr), "--data", data_s, "--groupby", "celltype", "--top", "2", "-q"],
             capture_output=True).stdout
    print("".join(top.splitlines(keepends=True)[:6]), end="", file=sys.stderr)
    sh(CLI + ["activity", str(OUT / "summary.tsv"), "--out", str(OUT / "activity.tsv"),
              "--top-out", str(OUT / "top_tfs.tsv"), "--top", "3"])
    sh(CLI + ["plot", str(OUT / "summary.tsv"), "--kind", "dotplot", "--top", "3",
              "--out", str(OUT / "dotplot.png")])
    sh(CLI + ["plot", str(OUT / "summary.tsv"), "--kind", "heatmap", "--zscore", "--top", "4",
              "--out", str(OUT / "activity_heatmap.png")])
    sh(CLI + ["plot", str(OUT / "summary.tsv"), "--kind", "dotplot", "--out", str(OUT / "dotplot_all.pdf")])
    sh(CLI + ["summarize", str(attr), "--data", data_s, "--groupby", "celltype", "--out", str(OUT / "summary.h5ad")])
    sh(CLI + ["activity", str(OUT / "summary.tsv"), "--top", "3", "--out", str(OUT / "activity.h5ad"), "-q"])

    peaks = OUT / "peaks"
    sh(CLI + ["run-many", str(OUT / "models"), data_s, "--target", "peaks", "--format", "h5ad", "--out-dir",
              str(peaks), "--covariates", "cov0,cov1", "--n-steps", "20", "-q"])
    sh(CLI + ["summarize", str(peaks), "--groupby", "celltype", "--out", str(OUT / "peak_summary.tsv")])
    sh(CLI + ["plot", str(peaks / "GENE_A.h5ad"), "--groupby", "celltype", "--kind", "heatmap",
              "--out", str(OUT / "peaks_GENE_A.png")])

    print(f"\ntop variable TFs per cell type ({OUT / 'top_tfs.tsv'}):", file=sys.stderr)
    print((OUT / "top_tfs.tsv").read_text(), end="", file=sys.stderr)
    print(f"outputs are in {OUT.resolve()}/", file=sys.stderr)
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(OUT / "activity_heatmap.png", args.docs / "activity_heatmap.png")
        print(f"copied the heatmap to {args.docs / 'activity_heatmap.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
