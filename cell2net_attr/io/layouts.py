"""How our HDF5 (``.h5``/``.hdf5``) and AnnData (``.h5ad``) outputs lie on disk, read back: their headers
(what the file says about itself), their row blocks and an ``.h5ad``'s ``obs``. The format registry
(:mod:`cell2net_attr.io.formats`) chooses between the two layouts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .._compat import read_elem
from ..errors import UserError, first_line
from .schema import ATTRIBUTIONS, DELTA, FEATURE_NAMES, OBS_NAMES, UNS_KEY


@dataclass
class Header:
    """What an attribution file says about itself, without its matrix: format, attributes (the run's
    parameters), cell and feature names, rows stored, and whether it holds convergence deltas."""

    path: Path
    fmt: str
    attrs: dict
    obs: list[str]
    features: list[str]
    n_rows: int
    has_delta: bool


def strings(values: np.ndarray) -> list[str]:
    """HDF5 string values (bytes or str) as str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def index_names(frame: h5py.Group) -> list[str]:
    """The index of an AnnData dataframe group (``obs``, ``var``) as strings."""
    return strings(np.asarray(read_elem(frame[frame.attrs["_index"]])))


def header_h5(f: h5py.File, path: Path) -> Header:
    """The header of an ``.h5`` output: its attributes and name datasets."""
    attrs = dict(f.attrs)
    names = FEATURE_NAMES.get(str(attrs.get("target", "tfs")), FEATURE_NAMES["tfs"])
    missing = [k for k in (ATTRIBUTIONS, OBS_NAMES, names) if k not in f]
    if missing:
        raise UserError(f"not a cell2net-attr attribution file: no {missing[0]!r} dataset", path)
    return Header(path, "h5", attrs, strings(f[OBS_NAMES][()]), strings(f[names][()]), f[ATTRIBUTIONS].shape[0],
                  DELTA in f)


def header_h5ad(f: h5py.File, path: Path) -> Header:
    """The header of an ``.h5ad`` output: ``uns["cell2net_attr"]`` and the obs and var names."""
    missing = [k for k in ("X", "obs", "var") if k not in f]
    if missing:
        raise UserError(f"not an AnnData attribution file: no {missing[0]!r}", path)
    try:
        obs, var = index_names(f["obs"]), index_names(f["var"])
        meta = read_elem(f[f"uns/{UNS_KEY}"]) if f"uns/{UNS_KEY}" in f else {}
        x = f["X"]  # a dataset, or a group when X is stored sparse (its shape is an attribute)
        n_rows = int(x.attrs["shape"][0]) if isinstance(x, h5py.Group) else x.shape[0]
        return Header(path, "h5ad", dict(meta) if isinstance(meta, dict) else {}, obs, var, n_rows, DELTA in f["obs"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read the AnnData file ({first_line(exc, 120)})", path) from exc


def matrix_h5(f: h5py.File) -> np.ndarray:
    """The whole attribution matrix of an ``.h5`` output."""
    return f[ATTRIBUTIONS][()]


def matrix_h5ad(f: h5py.File) -> np.ndarray:
    """The whole ``X`` of an ``.h5ad`` output, dense."""
    x = read_elem(f["X"])
    return x.toarray() if hasattr(x, "toarray") else x


def rows_h5(f: h5py.File, header: Header, block: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(start, attributions, deltas)`` of an ``.h5`` output, ``block`` rows at a time."""
    delta = f[DELTA] if header.has_delta else None
    for a in range(0, header.n_rows, block):
        d = None if delta is None else np.asarray(delta[a : a + block], dtype=np.float32)
        yield a, np.asarray(f[ATTRIBUTIONS][a : a + block], dtype=np.float32), d


def rows_h5ad(f: h5py.File, header: Header, block: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(start, attributions, deltas)`` of an ``.h5ad`` output (deltas from ``obs``), ``block`` rows at a time."""
    delta = read_elem(f["obs"][DELTA]) if header.has_delta else None
    for a in range(0, header.n_rows, block):
        d = None if delta is None else np.asarray(delta[a : a + block], dtype=np.float32)
        yield a, np.asarray(f["X"][a : a + block], dtype=np.float32), d


def obs_h5ad(f: h5py.File) -> pd.DataFrame:
    """An ``.h5ad`` output's ``obs``, without the convergence deltas (they travel with the rows)."""
    return read_elem(f["obs"]).drop(columns=[DELTA], errors="ignore")
