"""Upstream's ``tf_to_gene`` and ``peak_to_gene`` on an attribution array, for notebooks.

``attr = cell2net_attr.peak_attr(model)`` then ``cell2net_attr.peak_to_gene(model.mdata, attr, "celltype")``
gives the table ``summarize`` writes for that gene (see :mod:`cell2net_attr.downstream.summary`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..io.reader import Attributions
from ..io.schema import FEATURE_LABEL
from .groups import groups_from_values
from .summary import check_top, gene_stats, gene_table


def tf_to_gene(mdata: Any, attr: np.ndarray, groupby: str | None = None, n_tfs: int | None = None) -> pd.DataFrame:
    """Per group and TF: ``mean_attr``, ``std_attr`` (ddof 0), ``n_cells``, ``frac_pos`` of ``attr``.

    Parameters
    ----------
    mdata
        The gene's per-gene MuData (``model.mdata``, or the ``GENE.h5mu`` upstream saves), whose TFs are
        ``uns["tfs"]``; or a model from :func:`cell2net_attr.load_model`.
    attr
        cells x TFs, every cell of ``mdata`` in order (what ``tf_attr(model)`` returns).
    groupby
        obs column; ``None`` = one table over all cells.
    n_tfs
        Keep the ``n_tfs`` TFs of largest ``mean_attr`` per group (default: all, in the model's order).
    """
    return _to_gene(mdata, attr, groupby, n_tfs, "tfs")


def peak_to_gene(mdata: Any, attr: np.ndarray, groupby: str | None = None) -> pd.DataFrame:
    """Per group and peak: ``mean_attr``, ``std_attr`` (ddof 0), ``z_score`` (across the gene's peaks),
    ``p_value`` (``2 * (1 - Phi(|z|))``), ``n_cells``, ``frac_pos``, as upstream ``peak_to_gene``.

    ``mdata`` is as for :func:`tf_to_gene` (peaks from ``uns["peak_to_gene"]["peak"]``); ``attr`` is
    cells x peaks (what ``peak_attr(model)`` returns).
    """
    return _to_gene(mdata, attr, groupby, None, "peaks")


def _to_gene(mdata: Any, attr: np.ndarray, groupby: str | None, n_top: int | None, target: str) -> pd.DataFrame:
    check_top(n_top, "n_tfs")
    if hasattr(mdata, "features") and hasattr(mdata, "mdata"):  # a model from load_model
        features, mdata = list(mdata.features(target)), mdata.mdata
    else:
        features = [str(f) for f in (mdata.uns["tfs"] if target == "tfs" else mdata.uns["peak_to_gene"]["peak"])]
    gene = str(mdata.mod["rna"].var_names[0])
    values = np.asarray(attr)
    if values.ndim != 2 or values.shape != (mdata.n_obs, len(features)):
        raise UserError(f"attr has shape {list(values.shape)}, expected {mdata.n_obs} cells x {len(features)} "
                        f"{FEATURE_LABEL[target]}s of {gene}", param="attr")
    groups = None
    if groupby is not None:
        if groupby not in mdata.obs.columns:
            raise UserError(f"obs has no column {groupby!r}", param="groupby")
        groups = groups_from_values(groupby, mdata.obs_names, mdata.obs[groupby].reset_index(drop=True))
    names = pd.Index([str(n) for n in mdata.obs_names])
    stats = gene_stats(Attributions(Path("<attr>"), gene, names, features, values, None, target), groups)
    return gene_table(stats, groupby, n_top)
