"""Upstream's ``tf_to_gene``, ``peak_to_gene`` and ``get_top_tfs``, for notebooks.

``attr = cell2net_attr.peak_attr(model)`` then ``cell2net_attr.peak_to_gene(model.mdata, attr, "celltype")``
gives the table ``summarize`` writes for that gene (see :mod:`cell2net_attr.downstream.summary`).
The attributions may be of some of the cells only: say which with ``idx`` (what was given to ``tf_attr``), or
give an AnnData (or the path of a ``run`` output) that names its cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.selection import resolve_idx
from ..errors import UserError, suggest
from ..io.reader import Attributions, read_attributions
from ..io.schema import FEATURE_LABEL
from .activity import top_variable_tfs
from .groups import groups_from_values
from .summary import check_top, gene_stats, gene_table


def tf_to_gene(mdata: Any, attr: Any, groupby: str | None = None, n_tfs: int | None = None, *,
               idx: Any = None, idx_type: str = "auto") -> pd.DataFrame:
    """Per group and TF: ``mean_attr``, ``std_attr`` (ddof 0), ``n_cells``, ``frac_pos`` of ``attr``.

    Parameters
    ----------
    mdata
        The gene's per-gene MuData (``model.mdata``, or the ``GENE.h5mu`` upstream saves), whose TFs are
        ``uns["tfs"]``; or a model from :func:`cell2net_attr.load_model`.
    attr
        cells x TFs: an array (what ``tf_attr(model, idx)`` returns), an AnnData whose ``obs_names`` name its
        cells, or the path of a ``run`` output (``.h5``/``.h5ad``).
    groupby
        obs column; ``None`` = one table over all cells.
    n_tfs
        Keep the ``n_tfs`` TFs of largest ``mean_attr`` per group (default: all, in the model's order).
    idx
        The cells of an array's rows, as given to ``tf_attr`` (obs names, positions, a boolean mask or the
        ``--idx`` syntax); default: every cell of ``mdata``, in order.
    idx_type
        How to read ``idx`` (``auto``, ``position``, ``name``), as in ``tf_attr``.
    """
    return _to_gene(mdata, attr, groupby, n_tfs, "tfs", idx, idx_type)


def peak_to_gene(mdata: Any, attr: Any, groupby: str | None = None, *, idx: Any = None,
                 idx_type: str = "auto") -> pd.DataFrame:
    """Per group and peak: ``mean_attr``, ``std_attr`` (ddof 0), ``z_score`` (across the gene's peaks),
    ``p_value`` (``2 * (1 - Phi(|z|))``), ``n_cells``, ``frac_pos``, as upstream ``peak_to_gene``.

    ``mdata``, ``attr``, ``idx`` and ``idx_type`` are as for :func:`tf_to_gene` (peaks from
    ``uns["peak_to_gene"]["peak"]``); ``attr`` is cells x peaks (what ``peak_attr(model, idx)`` returns).
    """
    return _to_gene(mdata, attr, groupby, None, "peaks", idx, idx_type)


def get_top_tfs(df: pd.DataFrame, n_top_tfs: int = 5, var_cutoff: float = 0.5) -> pd.DataFrame:
    """Upstream's ``get_top_tfs``: the ``n_top_tfs`` TFs of highest z-score per group among the most variable.

    ``df`` is TF x group (the sum of ``mean_attr`` over genes, as ``cell2net-attr activity`` writes it). TFs
    are ranked by variance across groups (ddof 1) and the first ``int(len(df) * var_cutoff)`` kept; each is
    z-scored across groups (ddof 1) and each group lists its ``n_top_tfs`` highest. Returns one column per
    group of ``df``, rows ``0 .. n_top_tfs - 1`` as upstream. Unlike upstream, a TF constant across groups
    (no z-score) is never listed, and ties keep the order by variance (then ``df``'s order).
    """
    if not isinstance(df, pd.DataFrame):
        raise UserError(f"must be a pandas DataFrame of TFs x groups, got {type(df).__name__}", param="df")
    if isinstance(n_top_tfs, bool) or not isinstance(n_top_tfs, (int, np.integer)) or n_top_tfs < 1:
        raise UserError(f"must be a positive integer, got {n_top_tfs!r}", param="n_top_tfs")
    if not 0 < var_cutoff <= 1:
        raise UserError(f"must be in (0, 1], got {var_cutoff}", param="var_cutoff")
    if df.shape[1] < 2:
        raise UserError(f"has {df.shape[1]} group column(s): the variance across groups needs at least 2",
                        param="df")
    values = df.to_numpy()
    if not all(pd.api.types.is_numeric_dtype(t) for t in df.dtypes) or not np.isfinite(values.astype(float)).all():
        raise UserError("must hold finite numbers only (TF x group activity)", param="df")
    top = top_variable_tfs(df, int(n_top_tfs), var_cutoff)
    top.index = pd.RangeIndex(len(top))
    return top


def _cells(mdata: Any, attr: Any, idx: Any, idx_type: str) -> tuple[np.ndarray, pd.Index]:
    """The matrix of ``attr`` and the names of its cells (rows)."""
    names = pd.Index([str(n) for n in mdata.obs_names])
    if isinstance(attr, (str, Path)) or (hasattr(attr, "obs_names") and hasattr(attr, "X")):
        if idx is not None:
            raise UserError("give idx only with an array: this attr names its own cells", param="idx")
        if isinstance(attr, (str, Path)):
            read = read_attributions(attr)
            return read.values, read.obs_names
        x = attr.X.toarray() if hasattr(attr.X, "toarray") else attr.X
        return np.asarray(x), pd.Index([str(n) for n in attr.obs_names])
    values = np.asarray(attr)
    if idx is None:
        if values.ndim == 2 and values.shape[0] != len(names):
            raise UserError(f"attr has {values.shape[0]} rows but mdata has {len(names)} cells: for attributions "
                            f"of some cells, pass idx= (the cells given to tf_attr/peak_attr)", param="attr")
        return values, names
    return values, names[resolve_idx(idx, names, idx_type)]


def _to_gene(mdata: Any, attr: Any, groupby: str | None, n_top: int | None, target: str, idx: Any,
             idx_type: str) -> pd.DataFrame:
    check_top(n_top, "n_tfs")
    if hasattr(mdata, "features") and hasattr(mdata, "mdata"):  # a model from load_model
        features, mdata = list(mdata.features(target)), mdata.mdata
    else:
        features = [str(f) for f in (mdata.uns["tfs"] if target == "tfs" else mdata.uns["peak_to_gene"]["peak"])]
    gene = str(mdata.mod["rna"].var_names[0])
    values, cells = _cells(mdata, attr, idx, idx_type)
    if values.ndim != 2 or values.shape != (len(cells), len(features)):
        raise UserError(f"attr has shape {list(values.shape)}, expected {len(cells)} cells x {len(features)} "
                        f"{FEATURE_LABEL[target]}s of {gene}", param="attr")
    all_names = pd.Index([str(n) for n in mdata.obs_names])
    unknown = ~cells.isin(all_names)
    if unknown.any():
        raise UserError(f"{int(unknown.sum())} of its {len(cells)} cells are not cells of mdata (first: "
                        f"{cells[unknown][0]!r})", param="attr")
    groups = None
    if groupby is not None:
        if groupby not in mdata.obs.columns:
            raise UserError(f"obs has no column {groupby!r}{suggest(groupby, mdata.obs.columns)}", param="groupby")
        groups = groups_from_values(groupby, all_names, mdata.obs[groupby].reset_index(drop=True))
    attributions = Attributions(Path("attr"), gene, cells, features, values, None, target)
    return gene_table(gene_stats(attributions, groups), groupby, n_top)
