"""The output formats: one registry of what each suffix means, how it is written and read back.

:func:`format_of` is the one place a path's suffix is parsed. Each :class:`OutputFormat` knows its
writer, whether it carries cell names (only those can be shards, merged, and read by the downstream
commands), how to read its header and its rows, and where its run identity is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .._compat import read_elem
from ..errors import UserError, first_line
from . import layouts, writers
from .layouts import Header
from .schema import (
    ENCODING_TYPE,
    ENCODING_TYPES,
    SUFFIXES,
    UNS_KEY,
    PredictionIdentity,
    RunIdentity,
    identity_sidecar,
)
from .storage import Storage
from .writers import Writer, check_output_path

Rows = Iterator[tuple[int, np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class OutputFormat:
    """One output format: its name, default suffix and the functions that write and read it."""

    name: str
    suffix: str
    writer: Callable[..., Writer]
    header: Callable[[h5py.File, Path], Header] | None = None  # None: no cell names, no header
    matrix: Callable[[h5py.File], np.ndarray] | None = None
    rows: Callable[[h5py.File, Header, int], Rows] | None = None

    @property
    def has_names(self) -> bool:
        """Whether the file names its cells (so it can be a shard, be merged and be read downstream)."""
        return self.header is not None

    def open_writer(self, path: Path, obs_names, features: list[str], meta: dict, with_delta: bool,
                    locking: bool | None = None, obs_table: Callable[[], pd.DataFrame] | None = None,
                    storage: Storage = Storage()) -> Writer:
        """A writer for ``path`` (already checked by :func:`check_output`), its values stored as ``storage``
        says (type and compression)."""
        return self.writer(path, obs_names, features, meta, with_delta, locking, obs_table, storage)


FORMATS: dict[str, OutputFormat] = {
    "h5": OutputFormat("h5", ".h5", writers.open_h5, layouts.header_h5, layouts.matrix_h5, layouts.rows_h5),
    "h5ad": OutputFormat("h5ad", ".h5ad", writers.open_h5ad, layouts.header_h5ad, layouts.matrix_h5ad,
                         layouts.rows_h5ad),
    "npy": OutputFormat("npy", ".npy", writers.open_npy),
}


def format_named(name: str) -> OutputFormat:
    """The format called ``name`` (``h5``, ``h5ad``, ``npy``)."""
    if name not in FORMATS:
        raise UserError(f"unknown format '{name}', choose from {', '.join(FORMATS)}", param="fmt")
    return FORMATS[name]


def format_of(path: str | Path) -> OutputFormat:
    """The format an output path's suffix names."""
    name = SUFFIXES.get(Path(path).suffix.lower())
    if name is None:
        raise UserError(f"unknown output format '{Path(path).suffix}', use {', '.join(SUFFIXES)}", path)
    return FORMATS[name]


def check_output(path: Path, overwrite: bool, inputs: list[Path], delta: bool = False,
                 storage: Storage = Storage()) -> OutputFormat:
    """Validate an attribution output path before any work (it can store deltas and ``storage``'s compression
    when asked); its format."""
    fmt = format_of(path)
    check_output_path(path, overwrite, inputs)
    if delta and not fmt.has_names:
        raise UserError("--delta is stored only in HDF5 or AnnData output (.h5/.hdf5/.h5ad)", path)
    storage.check(fmt.name, str(path))
    return fmt


def read_header(path: str | Path) -> Header:
    """The header of an HDF5 or AnnData attribution file; the matrix is only measured. Raises
    :class:`UserError` when the file is unreadable or not one of ours (or a ``.npy``, which has none)."""
    path = Path(path)
    name = SUFFIXES.get(path.suffix.lower())
    if name is None:
        raise UserError(f"not a cell2net-attr attribution file: its suffix '{path.suffix}' is none of "
                        f"{', '.join(s for s, n in SUFFIXES.items() if FORMATS[n].has_names)}", path)
    fmt = FORMATS[name]
    if fmt.header is None:
        raise UserError("a .npy output has no cell names or run parameters to read", path)
    try:
        with h5py.File(path, "r") as f:
            return fmt.header(f, path)
    except OSError as exc:
        raise UserError(f"not a readable HDF5 file ({first_line(exc, 120)})", path) from exc
    except (KeyError, ValueError, TypeError) as exc:  # a damaged or foreign layout
        raise UserError(f"cannot read the attribution file ({first_line(exc, 120)})", path) from exc


def read_matrix(header: Header) -> np.ndarray:
    """The attribution matrix of the file ``header`` describes, as float32 (whatever type it is stored in)."""
    try:
        with h5py.File(header.path, "r") as f:
            x = FORMATS[header.fmt].matrix(f)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read the attributions ({first_line(exc, 120)})", header.path) from exc
    return np.asarray(x, dtype=np.float32)


def iter_rows(header: Header, block: int = 65536) -> Rows:
    """The file's ``(start, attributions, deltas)`` blocks of ``block`` rows, in order (bounded memory), as
    float32."""
    with h5py.File(header.path, "r") as f:
        yield from FORMATS[header.fmt].rows(f, header, block)


def read_obs(header: Header) -> pd.DataFrame:
    """The cells' ``obs``: an ``.h5ad``'s own (without deltas), else their names alone."""
    if header.fmt != "h5ad":
        return pd.DataFrame(index=pd.Index(header.obs))
    with h5py.File(header.path, "r") as f:
        return layouts.obs_h5ad(f)


def read_identity(path: Path) -> RunIdentity | PredictionIdentity:
    """The run identity an output records: an attribution output's (its attributes, a ``.npy``'s sidecar), or
    that of an output of predicted rates (mutagenesis, variants: their attributes, or a table's sidecar)."""
    path = Path(path)
    name = SUFFIXES.get(path.suffix.lower())
    if name is not None and FORMATS[name].has_names:
        attrs = _stored_attrs(path, name)
        if str(attrs.get("encoding-type", ENCODING_TYPE)) in PREDICTION_TYPES:
            return PredictionIdentity.from_attrs(attrs, path)
        header = read_header(path)
        return RunIdentity.from_attrs(header.attrs, path, header.has_delta, header.fmt)
    sidecar = identity_sidecar(path)
    try:
        attrs = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise UserError("records no run identity (written without its hidden .run.json sidecar, e.g. by an "
                        "older version)", path) from exc
    if not isinstance(attrs, dict):
        raise UserError(f"its identity sidecar {sidecar.name} is not a JSON object", path)
    if str(attrs.get("encoding-type", ENCODING_TYPE)) in PREDICTION_TYPES:
        return PredictionIdentity.from_attrs(attrs, path)
    return RunIdentity.from_attrs(attrs, path, fmt="npy")


#: The ``encoding-type`` of outputs of predicted rates, whose identity is a :class:`PredictionIdentity`.
PREDICTION_TYPES = (ENCODING_TYPES["mutagenesis"], ENCODING_TYPES["variants"])


def _stored_attrs(path: Path, fmt: str) -> dict:
    """An HDF5 output's own attributes (``.h5`` root, ``.h5ad`` ``uns["cell2net_attr"]``), without its matrix."""
    try:
        with h5py.File(path, "r") as f:
            if fmt == "h5":
                return dict(f.attrs)
            meta = read_elem(f[f"uns/{UNS_KEY}"]) if f"uns/{UNS_KEY}" in f else {}
            return dict(meta) if isinstance(meta, dict) else {}
    except OSError as exc:
        raise UserError(f"not a readable HDF5 file ({first_line(exc, 120)})", path) from exc
