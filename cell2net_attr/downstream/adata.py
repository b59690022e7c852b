"""Downstream results as AnnData, for scanpy: groups are ``obs``, TFs (or TF-gene pairs) are ``var``.

* summary: ``obs`` = groups (the group column and ``n_cells``), ``var`` = (TF, gene) or (peak, gene) pairs
  named ``TF|GENE`` with ``tf`` (``peak``) and ``gene`` columns, one layer per statistic (``mean_attr``,
  ``std_attr``, ``frac_pos``; peaks also ``z_score``, ``p_value``), ``X`` = ``mean_attr``. A pair absent
  from a group (``--top``) is NaN. ``obs["n_cells"]`` is the group's largest cell count over the genes; when
  the genes' attribution files hold different cells, the per-pair counts are in the layer ``n_cells``.
* activity: ``obs`` = groups, ``var`` = TFs, ``X`` = activity, layer ``zscore`` (each TF across groups,
  ddof 1), ``uns["top_tfs"]`` = the top variable TFs of each group, best first.

Values are float32. Both carry what made them in ``uns["cell2net_attr"]``, with their own ``encoding-type``
(:data:`~cell2net_attr.io.schema.ENCODING_TYPES`), so that the downstream commands tell them from attribution
files; :func:`summary_from_h5ad` and :func:`activity_from_h5ad` read them back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._version import __version__
from ..errors import UserError, first_line
from ..io.schema import ENCODING_TYPES, ENCODING_VERSION, UNS_KEY
from ..io.writers import atomic_output
from .summary import STAT_COLUMNS, Summary, summary_columns

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
    adata.uns[UNS_KEY] = {**_encoding("summary"), "target": summary.target, "groupby": summary.groupby or "",
                          "n_genes": len(summary.genes), "top": summary.n_top or 0, "version": __version__}
    return adata


def _encoding(kind: str) -> dict:
    return {"encoding-type": ENCODING_TYPES[kind], "encoding-version": ENCODING_VERSION, "kind": kind}


def activity_anndata(matrix: pd.DataFrame, zscore: pd.DataFrame | None, top: pd.DataFrame | None,
                     var_cutoff: float, genes: list[str] = ()):
    """The TF x group activity, its z-scores and the top variable TFs as an AnnData of groups x TFs
    (``zscore`` and ``top`` are ``None`` for one group: no layer, an empty ``uns["top_tfs"]``)."""
    import anndata

    obs = _obs(list(matrix.columns), matrix.columns.name)
    var = pd.DataFrame(index=pd.Index([str(t) for t in matrix.index]))
    layers = {} if zscore is None else {"zscore": zscore.to_numpy(dtype=np.float32).T.copy()}
    adata = anndata.AnnData(X=matrix.to_numpy(dtype=np.float32).T.copy(), obs=obs, var=var, layers=layers)
    adata.uns["top_tfs"] = {} if top is None else {str(g): np.asarray(top[g], dtype=str) for g in top.columns}
    adata.uns[UNS_KEY] = {**_encoding("activity"), "groupby": matrix.columns.name or "", "var_cutoff": var_cutoff,
                          "top": 0 if top is None else len(top), "genes": np.asarray(list(genes), dtype=str),
                          "version": __version__}
    return adata


def _read(path: Path):
    import anndata

    try:
        return anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read the AnnData file ({first_line(exc, 120)})", path) from exc


def _group_labels(adata, groupby: str | None) -> list:
    """The groups of an output's obs: its group column's values (their own type), else the obs names."""
    if groupby and groupby in adata.obs.columns:
        return list(adata.obs[groupby].astype(object))
    return list(adata.obs_names)


def summary_from_h5ad(path: str | Path) -> tuple[str | None, str, pd.DataFrame]:
    """(group column, target, table) of a ``summarize --out S.h5ad`` file: the rows of the table it was made
    from (gene after gene, group after group; pairs absent from a group, NaN, have no row), the features of a
    group in ``var`` order, or by ``mean_attr`` (largest first) when the summary kept each gene's top ones."""
    path = Path(path)
    adata = _read(path)
    meta = adata.uns.get(UNS_KEY, {})
    target, groupby = str(meta.get("target", "tfs")), str(meta.get("groupby", "")) or None
    feature = "peak" if target == "peaks" else "tf"
    lacking = [k for k in (feature, "gene") if k not in adata.var.columns] + \
        [k for k in ("mean_attr",) if k not in adata.layers]
    if lacking:
        raise UserError(f"not a summary AnnData: no {lacking[0]!r}", path)
    mean = np.asarray(adata.layers["mean_attr"], dtype=np.float64)
    gene_codes = pd.factorize(adata.var["gene"].astype(str))[0]
    rows, cols = np.nonzero(np.isfinite(mean))
    by_mean = -mean[rows, cols] if int(meta.get("top", 0)) else np.zeros(len(rows))
    order = np.lexsort((cols, by_mean, rows, gene_codes[cols]))
    rows, cols = rows[order], cols[order]
    table = pd.DataFrame({feature: adata.var[feature].astype(str).to_numpy()[cols],
                          "gene": adata.var["gene"].astype(str).to_numpy()[cols]})
    labels = _group_labels(adata, groupby)
    if groupby is not None:
        table[groupby] = pd.Categorical([labels[r] for r in rows], categories=labels)
    for name in STAT_COLUMNS[target]:
        if name in adata.layers:
            table[name] = np.asarray(adata.layers[name], dtype=np.float64)[rows, cols]
        elif name == "n_cells" and "n_cells" in adata.obs.columns:
            table[name] = adata.obs["n_cells"].to_numpy()[rows]
    if "n_cells" in table.columns:
        table["n_cells"] = table["n_cells"].astype(np.int64)
    return groupby, target, table[[c for c in summary_columns(target, groupby) if c in table.columns]]


def activity_from_h5ad(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The TF x group matrix of an ``activity --out A.h5ad`` file, and the genes it sums over (when recorded)."""
    path = Path(path)
    adata = _read(path)
    meta = adata.uns.get(UNS_KEY, {})
    groupby = str(meta.get("groupby", "")) or None
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    matrix = pd.DataFrame(np.asarray(x, dtype=np.float64).T, index=pd.Index(list(adata.var_names), name="tf"),
                          columns=pd.Index(_group_labels(adata, groupby), name=groupby))
    return matrix, [str(g) for g in meta.get("genes", [])]


def write_h5ad(adata, out: str | Path) -> None:
    """Write ``adata`` to ``out`` atomically (nothing at ``out`` until it is complete)."""
    with atomic_output(Path(out)) as tmp:
        adata.write_h5ad(tmp)
