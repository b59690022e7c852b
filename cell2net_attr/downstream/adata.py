"""Downstream results as AnnData, for scanpy: groups are ``obs``, TFs (or TF-gene pairs) are ``var``.

* summary: ``obs`` = groups (the group column and ``n_cells``), ``var`` = (TF, gene) or (peak, gene) pairs
  named ``TF|GENE`` with ``tf`` (``peak``) and ``gene`` columns, one layer per statistic (``mean_attr``,
  ``std_attr``, ``frac_pos``; peaks also ``z_score``, ``p_value``), ``X`` = ``mean_attr``. A pair absent
  from a group (``--top``) is NaN. ``obs["n_cells"]`` is the group's largest cell count over the genes; when
  the genes' attribution files hold different cells, the per-pair counts are in the layer ``n_cells``.
* activity: ``obs`` = groups, ``var`` = TFs, ``X`` = activity, layer ``zscore`` (each TF across groups,
  ddof 1), ``uns["top_tfs"]`` = the top variable TFs of each group, best first.

Values are float32. Both carry what made them in ``uns["cell2net_attr"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._version import __version__
from ..io.schema import UNS_KEY
from ..io.writers import atomic_output
from .summary import STAT_COLUMNS, Summary

ALL_CELLS = "all cells"  # the one group without --groupby
PAIR_SEPARATOR = "|"


def _groups(summary: Summary) -> tuple[np.ndarray, list]:
    """Each table row's group position and the groups present, in the summary's order."""
    if summary.groupby is None:
        return np.zeros(len(summary.table), dtype=np.int64), [ALL_CELLS]
    col = summary.table[summary.groupby]
    present = np.unique(col.cat.codes.to_numpy())
    present = present[present >= 0]
    position = np.full(len(col.cat.categories), -1, dtype=np.int64)
    position[present] = np.arange(len(present))
    return position[col.cat.codes.to_numpy()], [col.cat.categories[i] for i in present]


def _obs(labels: list, column: str | None) -> pd.DataFrame:
    """One obs row per group, named by its label, with the group column (categorical, in this order)."""
    obs = pd.DataFrame(index=pd.Index([str(g) for g in labels]))
    if column is not None:
        obs[column] = pd.Categorical(labels, categories=labels)
    return obs


def summary_anndata(summary: Summary):
    """The summary table as an AnnData of groups x (feature, gene) pairs (see the module docstring)."""
    import anndata

    table, feature = summary.table, summary.feature
    rows, labels = _groups(summary)
    cols, pairs = pd.factorize(pd.MultiIndex.from_arrays([table[feature].astype(str), table["gene"].astype(str)]))
    shape = (len(labels), len(pairs))
    layers = {}
    for name in (c for c in STAT_COLUMNS[summary.target] if c != "n_cells" and c in table.columns):
        layers[name] = np.full(shape, np.nan, dtype=np.float32)
        layers[name][rows, cols] = table[name].to_numpy(dtype=np.float32)
    obs = _obs(labels, summary.groupby)
    if "n_cells" in table.columns:
        n = table["n_cells"].to_numpy(dtype=np.int64)
        largest = np.zeros(len(labels), dtype=np.int64)
        np.maximum.at(largest, rows, n)
        obs["n_cells"] = largest
        if (largest[rows] != n).any():
            layers["n_cells"] = np.full(shape, np.nan, dtype=np.float32)
            layers["n_cells"][rows, cols] = n
    var = pd.DataFrame({feature: pairs.get_level_values(0), "gene": pairs.get_level_values(1)})
    var.index = pd.Index([f"{f}{PAIR_SEPARATOR}{g}" for f, g in pairs])
    adata = anndata.AnnData(X=layers["mean_attr"].copy(), obs=obs, var=var, layers=layers)
    adata.uns[UNS_KEY] = {"kind": "summary", "target": summary.target, "groupby": summary.groupby or "",
                          "n_genes": len(summary.genes), "version": __version__}
    return adata


def activity_anndata(matrix: pd.DataFrame, zscore: pd.DataFrame, top: pd.DataFrame, var_cutoff: float):
    """The TF x group activity, its z-scores and the top variable TFs as an AnnData of groups x TFs."""
    import anndata

    obs = _obs(list(matrix.columns), matrix.columns.name)
    var = pd.DataFrame(index=pd.Index([str(t) for t in matrix.index]))
    adata = anndata.AnnData(X=matrix.to_numpy(dtype=np.float32).T.copy(), obs=obs, var=var,
                            layers={"zscore": zscore.to_numpy(dtype=np.float32).T.copy()})
    adata.uns["top_tfs"] = {str(g): np.asarray(top[g], dtype=str) for g in top.columns}
    adata.uns[UNS_KEY] = {"kind": "activity", "groupby": matrix.columns.name or "", "var_cutoff": var_cutoff,
                          "top": len(top), "version": __version__}
    return adata


def write_h5ad(adata, out: str | Path) -> None:
    """Write ``adata`` to ``out`` atomically (nothing at ``out`` until it is complete)."""
    with atomic_output(Path(out)) as tmp:
        adata.write_h5ad(tmp)
