"""Plot the AnnData outputs of ``summarize`` and ``activity`` with scanpy.

Run ``python examples/downstream.py`` first (it writes demo-out/downstream/summary.h5ad and activity.h5ad).
scanpy is not a dependency of cell2net-attr: install it where you plot (``pip install scanpy``).

Usage: ``python examples/scanpy_plots.py [DIR]`` (default demo-out/downstream) -> DIR/scanpy_*.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import scanpy as sc  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out/downstream")
sc.settings.figdir = out

# activity.h5ad: obs = cell types, var = TFs, X = activity, layers["zscore"], uns["top_tfs"]
act = ad.read_h5ad(out / "activity.h5ad")
top = list(dict.fromkeys(tf for tfs in act.uns["top_tfs"].values() for tf in tfs))
sc.pl.matrixplot(act, top, groupby="celltype", layer="zscore", cmap="RdBu_r", vcenter=0,
                 colorbar_title="activity z-score", save="activity.png", show=False)

# summary.h5ad: obs = cell types, var = TF|gene pairs, layers mean_attr, std_attr, frac_pos (X = mean_attr)
summary = ad.read_h5ad(out / "summary.h5ad")
gene = summary[:, summary.var["gene"] == "GENE_A"]
pairs = list(gene.var_names)
frac = gene.to_df(layer="frac_pos")  # dot size: the fraction of cells with a positive attribution
dp = sc.pl.DotPlot(gene, pairs, groupby="celltype", dot_color_df=gene.to_df(), dot_size_df=frac,
                   cmap="RdBu_r", vcenter=0)
dp.legend(colorbar_title="mean attribution", size_title="cells with\nattribution > 0")
dp.savefig(out / "scanpy_dotplot_GENE_A.png")
print(f"wrote {out}/matrixplot_activity.png and {out}/scanpy_dotplot_GENE_A.png", file=sys.stderr)
