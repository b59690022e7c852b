"""Covariates: the obs columns a model takes besides peaks and TFs, named by the user, never guessed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UserError, suggest
from .store import Store


def parse_covariates(covariates: list[str] | str | None) -> list[str]:
    """Covariate column names from a list or ``"a,b"``; an empty name is an error."""
    if covariates is None:
        return []
    if isinstance(covariates, str):
        items = [c.strip() for c in covariates.split(",")]
        if any(not c for c in items):
            raise UserError(f"empty column name in '{covariates}'", param="covariates")
        return items
    return [str(c) for c in covariates]



def require_covariates(n_covariates: int, covariates: list[str], store: Store) -> None:
    """A model with covariates needs them named: never guess, list the numeric obs columns instead."""
    if n_covariates and not covariates:
        candidates = numeric_obs_columns(store)
        raise UserError(f"the model needs {n_covariates} covariate(s) and none were given; "
                        f"numeric obs columns: {', '.join(candidates) or 'none'} "
                        f"(name them in the model's order)", param="covariates")



def numeric_obs_columns(store: Store) -> list[str]:
    """Names of numeric columns of the global ``obs`` (covariate candidates)."""
    out = []
    for name in store.columns("obs"):
        try:
            values = store.column("obs", name)
        except UserError:
            continue
        dtype = getattr(values, "dtype", None)
        if dtype is not None and not isinstance(dtype, pd.CategoricalDtype) and np.issubdtype(dtype, np.number):
            out.append(name)
    return out



def covariate_matrix(store: Store, names: list[str], n_cells: int) -> np.ndarray:
    """The named obs columns as a (cells, covariates) float32 matrix; each must be numeric and finite."""
    src = store.source
    present = store.columns("obs")
    out = np.zeros((n_cells, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        if name not in present:
            raise UserError(f"covariate column '{name}' not in obs{suggest(name, present)}", src)
        values = store.column("obs", name)
        dtype = getattr(values, "dtype", None)
        if dtype is None or isinstance(dtype, pd.CategoricalDtype) or not (
            np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)
        ):
            raise UserError(f"covariate column '{name}' is not numeric ({dtype})", src)
        col = np.asarray(values, dtype=np.float32)
        if col.shape != (n_cells,):
            raise UserError(f"covariate column '{name}' has shape {list(col.shape)}, expected one value for each "
                            f"of the {n_cells} cells", src)
        if not np.all(np.isfinite(col)):
            raise UserError(f"covariate column '{name}' has NaN or Inf values "
                            f"(first at cell {int(np.argmax(~np.isfinite(col)))})", src)
        out[:, j] = col
    return out
