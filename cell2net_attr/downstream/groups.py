"""Cell groups (an obs column of the data) matched to attribution files by cell name."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.obs_groups import check_groupable, group_codes, group_order, obs_column
from ..errors import UserError, suggest
from .kinds import data_refusal, file_kind


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
        values = obs_column(store, column)
        names = store.index("obs")
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
    order = group_order(series) if order is None else order
    return Groups(column, names, group_codes(series, order), order)


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
