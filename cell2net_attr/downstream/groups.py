"""Cell groups (an obs column of the data) matched to attribution files by cell name."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError, suggest
from .kinds import data_refusal, file_kind

MAX_GROUPS = 100  # distinct values of a numeric column beyond which it is not groups
FEW = 10  # a numeric column with fewer distinct values is groups, whatever the number of cells
MAX_SCANNED = 50  # obs columns looked at for a suggestion


@dataclass
class Groups:
    """Group labels of the cells of a data file, by obs name.

    ``codes[i]`` is the position in ``order`` of cell ``names[i]``'s group, ``-1`` when it is missing (NaN).
    """

    column: str
    names: pd.Index
    codes: np.ndarray
    order: list

    def codes_for(self, obs_names: pd.Index, source: str | Path) -> np.ndarray:
        """The codes of the cells ``obs_names`` (matched by name, a new array each call); unknown names are a
        :class:`UserError`."""
        unique = ~self.names.duplicated(keep=False)
        names = self.names if unique.all() else self.names[unique]
        pos = names.get_indexer(obs_names)
        if (pos < 0).any():
            absent = obs_names[pos < 0]
            twice = absent.intersection(self.names)
            if len(twice):
                raise UserError(f"cell {twice[0]!r} appears more than once in the data's obs, so it cannot be "
                                f"matched by name", source)
            raise UserError(f"{len(absent)} of its {len(obs_names)} cells are not in the data's obs (first: "
                            f"{absent[0]!r}): the attributions were computed on other data", source)
        return (self.codes if unique.all() else self.codes[unique])[pos]


def read_groups(data: str | Path | object, column: str) -> Groups:
    """The groups of obs column ``column`` of an ``.h5mu`` path or MuData, ordered as documented above."""
    from ..data.store import open_store

    if isinstance(data, (str, Path)):
        kind = file_kind(data)
        if kind and kind != "data":
            raise data_refusal(data, kind)
    store = open_store(data)
    try:
        present = store.columns("obs")
        if column not in present:
            hint = suggest(column, present) or f"; its columns: {', '.join(present[:20])}"
            raise UserError(f"obs has no column {column!r}{hint}", param="groupby")
        names = store.index("obs")
        values = store.column("obs", column)
        if continuous(pd.Series(values) if not isinstance(values, pd.Series) else values):
            groupable = [c for c in present[:MAX_SCANNED] if c != column and _is_label_column(store, c)]
            check_groupable(column, values, groupable)
    finally:
        if store is not data:
            store.close()
    return groups_from_values(column, names, values, str(getattr(store, "source", data)))


def groups_from_values(column: str, names: Iterable, values, source: str = "<data>",
                       order: list | None = None) -> Groups:
    """:class:`Groups` from labels (categorical, strings, numbers; NaN/None = missing) of the cells ``names``.

    ``order`` (every label, in order) is shared by several files; by default it follows from ``values``.
    """
    names = pd.Index([str(n) for n in names])
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if series.ndim != 1 or len(series) != len(names):
        raise UserError(f"obs column {column!r} has {len(series)} values for {len(names)} cells", source)
    check_groupable(column, series)
    missing = series.isna().to_numpy()
    order = group_order(series) if order is None else order
    codes = pd.Index(order, dtype=object).get_indexer(series.to_numpy(dtype=object)) if order else \
        np.full(len(series), -1)
    codes = np.where(missing, -1, codes).astype(np.int64)
    return Groups(column, names, codes, order)


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


def _is_label_column(store, name: str) -> bool:
    """Whether an obs column holds labels (categorical or text), a candidate for --groupby."""
    try:
        dtype = getattr(store.column("obs", name), "dtype", None)
    except UserError:
        return False
    return isinstance(dtype, pd.CategoricalDtype) or dtype == object or pd.api.types.is_string_dtype(dtype)


def group_order(series: pd.Series) -> list:
    """A categorical column's categories, otherwise its sorted unique values (by their text when mixed)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.categories)
    present = pd.unique(series[series.notna().to_numpy()].to_numpy(dtype=object))
    try:
        return sorted(present)
    except TypeError:  # mixed types: sort by their text
        return sorted(present, key=str)


def groups_from_attribution_files(files: Iterable[Path], column: str) -> dict[Path, Groups]:
    """The groups of obs column ``column`` that AnnData attribution files carry, one :class:`Groups` per file,
    all in one order (the shared categories, otherwise the sorted labels of all files)."""
    from ..io.reader import read_obs_column, read_obs_columns

    columns = {}
    for path in files:
        if Path(path).suffix.lower() != ".h5ad":
            raise UserError("needed with --groupby when an attribution file is HDF5 (it carries no obs): "
                            "the .h5mu whose obs holds the column", param="data")
        present = read_obs_columns(path)
        if column not in present:
            raise UserError(f"its obs has no column {column!r}{suggest(column, present)}; give the .h5mu that has "
                            f"it with --data", path)
        columns[Path(path)] = read_obs_column(path, column)
    series = list(columns.values())
    kinds = [s.cat.categories for s in series if isinstance(s.dtype, pd.CategoricalDtype)]
    if len(kinds) == len(series) and all(k.equals(kinds[0]) for k in kinds):
        order = list(kinds[0])
    else:
        order = group_order(pd.Series(np.concatenate([s.to_numpy(dtype=object) for s in series])))
    return {p: groups_from_values(column, s.index, s, str(p), order) for p, s in columns.items()}
