"""Cell groups from an obs column (``--groupby``): labels in their order, each cell's code, and the refusal of a
column that is not groups. Shared by the jobs that group while computing and by the downstream tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError, suggest
from .store import Store

MAX_GROUPS = 100  # distinct values of a numeric column beyond which it is not groups
FEW = 10  # a numeric column with fewer distinct values is groups, whatever the number of cells
MAX_SCANNED = 50  # obs columns looked at for a suggestion


@dataclass(frozen=True)
class ObsGroups:
    """The groups of obs column ``column``: ``codes[i]`` is cell ``i``'s position in ``order``, -1 when missing."""

    column: str
    order: list
    codes: np.ndarray


def group_order(series: pd.Series) -> list:
    """A categorical column's categories, otherwise its sorted unique values (by their text when mixed)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.categories)
    present = pd.unique(series[series.notna().to_numpy()].to_numpy(dtype=object))
    try:
        return sorted(present)
    except TypeError:  # mixed types: sort by their text
        return sorted(present, key=str)


def group_codes(series: pd.Series, order: list) -> np.ndarray:
    """Each value's position in ``order`` (-1 for a missing value or one not in ``order``)."""
    codes = pd.Index(order, dtype=object).get_indexer(series.to_numpy(dtype=object)) if order else \
        np.full(len(series), -1)
    return np.where(series.isna().to_numpy(), -1, codes).astype(np.int64)


def continuous(series: pd.Series) -> int:
    """The number of distinct values of a numeric, non-categorical column with more than make sense for
    groups (over :data:`MAX_GROUPS`, or over half its cells and over :data:`FEW`); 0 for a column of groups."""
    if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series.dtype) or \
            not pd.api.types.is_numeric_dtype(series.dtype):
        return 0
    distinct = int(series.nunique(dropna=True))
    return distinct if distinct > MAX_GROUPS or (distinct > FEW and distinct > series.notna().sum() / 2) else 0


def check_groupable(column: str, values, alternatives: list[str] = ()) -> None:
    """Refuse a numeric column that looks continuous (see :func:`continuous`): it would make a group per value."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    distinct = continuous(series)
    if distinct:
        hint = f" such as {', '.join(repr(c) for c in alternatives[:4])}" if alternatives else ""
        raise UserError(f"obs column {column!r} is numeric with {distinct} distinct values over "
                        f"{int(series.notna().sum())} cells: it looks continuous, not like groups; choose a "
                        f"categorical column{hint}, or bin this one first (e.g. pandas.cut)", param="groupby")


def label_columns(store: Store, exclude: str = "") -> list[str]:
    """obs columns holding labels (categorical or text), candidates for ``--groupby`` (the first few scanned)."""
    out = []
    for name in store.columns("obs")[:MAX_SCANNED]:
        if name == exclude:
            continue
        try:
            dtype = getattr(store.column("obs", name), "dtype", None)
        except UserError:
            continue
        if isinstance(dtype, pd.CategoricalDtype) or dtype == object or pd.api.types.is_string_dtype(dtype):
            out.append(name)
    return out


def obs_column(store: Store, column: str) -> pd.Series:
    """The obs column ``column`` of a data file, checked to be groups (a misspelt name gets suggestions)."""
    present = store.columns("obs")
    if column not in present:
        hint = suggest(column, present) or f"; its columns: {', '.join(present[:20])}"
        raise UserError(f"obs has no column {column!r}{hint}", param="groupby")
    values = store.column("obs", column)
    series = (values if isinstance(values, pd.Series) else pd.Series(values)).reset_index(drop=True)
    if continuous(series):
        check_groupable(column, series, label_columns(store, column))
    return series


def read_obs_groups(store: Store, column: str) -> ObsGroups:
    """The groups of obs column ``column`` over every cell of ``store``."""
    series = obs_column(store, column)
    order = group_order(series)
    return ObsGroups(column, order, group_codes(series, order))
