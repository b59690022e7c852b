"""The one I/O layer for MuData: paths into an ``.h5mu`` file, or into an in-memory MuData.

Both stores answer the same questions with the on-disk path names of the MuData format
(``obs``, ``uns/peak_to_gene``, ``mod/atac/layers/counts``, ...), so the per-gene view in
:mod:`cell2net_attr.data` is written once. The HDF5 store reads only what it is asked for:
small elements whole, matrices by rows, so a large file is never loaded whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._compat import anndata_read_errors, read_elem, sparse_dataset
from ..errors import UserError, first_line

#: What reading a damaged or foreign file raises (reported as a bad file, not as a bug).
_READ_ERRORS = (KeyError, OSError, RuntimeError, ValueError, TypeError, IndexError, NotImplementedError,
                AttributeError, *anndata_read_errors())


class CellNames:
    """The cells' names (an obs index) without holding them: length, slices and rows are read on
    demand; the whole index only when a lookup by name needs it, and then kept."""

    def __init__(self, length: int, read_slice, read_all) -> None:
        self._length, self._read_slice, self._read_all = length, read_slice, read_all
        self._index: pd.Index | None = None

    def __len__(self) -> int:
        return self._length

    @property
    def index(self) -> pd.Index:
        """All names as a pandas Index (read once)."""
        if self._index is None:
            self._index = self._read_all()
        return self._index

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Names of rows ``start:stop``."""
        if self._index is not None:
            return self._index[start:stop].to_numpy()
        return self._read_slice(start, stop)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Names of ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._index is not None or not len(rows):
            return self.index.to_numpy()[rows]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * len(rows):  # dense enough: one slice
            return self.slice(lo, hi)[rows - lo]
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read_slice(uniq, None)[inverse]


class H5Store:
    """Read-only access to an ``.h5mu`` file through h5py and anndata's element readers."""

    def __init__(self, path: str | Path, locking: bool | None = None) -> None:
        self.path = Path(path)
        self.source = str(path)
        if not self.path.exists():
            raise UserError("data file not found", path)
        if self.path.is_dir():
            raise UserError("data path is a directory, expected an .h5mu file", path)
        with open(self.path, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PK\x03\x04":  # a zip: how torch saves a checkpoint
            raise UserError("this is a PyTorch checkpoint (or another zip file), not an .h5mu: give the checkpoint "
                            "first, then the data", path)
        try:
            self._file = h5py.File(self.path, "r", locking=locking)
        except OSError as exc:
            raise UserError(f"not a readable HDF5 file ({first_line(exc)})", path) from exc
        encoding = self._file.attrs.get("encoding-type", "")
        if "mod" not in self._file or (encoding and str(encoding).lower() != "mudata"):
            raise UserError("HDF5 file is not MuData (.h5mu): no 'mod' group", path)

    def close(self) -> None:
        """Close the file handle."""
        self._file.close()

    def has(self, key: str) -> bool:
        """Whether the element exists."""
        try:
            return key in self._file
        except (KeyError, OSError, RuntimeError):
            return False

    def read(self, key: str) -> Any:
        """Read a small element whole (DataFrame, array, string list). What every gene of a job shares
        is read once, by :class:`~cell2net_attr.data.job_index.DataIndex`."""
        return self._guard(key, lambda: read_elem(self._file[key]))

    def numeric_frame(self, key: str) -> pd.DataFrame | None:
        """A dataframe element whose columns are all numeric arrays of one dtype and length (``rna.uns['gene_tf']``:
        genes x TFs), read column by column into one matrix; ``None`` for any other (then :meth:`read` it).

        anndata's reader gives the same table, one Series per column, in about three times the time: the
        columns are read here through h5py's low-level calls (a column that is not one dataset, a categorical
        or nullable one, makes the table another kind)."""
        def _read() -> pd.DataFrame | None:
            group = self._file[key]
            if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") != "dataframe":
                return None
            columns = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
            datasets = []
            for c in columns:
                if h5py.h5g.get_objinfo(group.id, c.encode()).type != h5py.h5g.DATASET:
                    return None
                datasets.append(h5py.h5d.open(group.id, c.encode()))
            if not datasets or not all(_plain_numeric(d, datasets[0]) for d in datasets):
                return None
            index = self.index(key)
            if len(index) != datasets[0].shape[0]:
                return None
            matrix = np.empty((len(columns), len(index)), dtype=datasets[0].dtype)
            for row, ds in zip(matrix, datasets):
                ds.read(h5py.h5s.ALL, h5py.h5s.ALL, row)
            return pd.DataFrame(matrix.T, index=index, columns=pd.Index(columns, dtype=object))

        return self._guard(key, _read)

    def _index_dataset(self, key: str):
        group = self._file[key]
        return group[group.attrs["_index"]]

    def cell_names(self, key: str) -> CellNames:
        """The index of ``key`` read on demand (vlen-string indexes; others are read whole)."""
        ds = self._guard(key, lambda: self._index_dataset(key))
        well_formed = (ds.dtype.kind == "O" and ds.ndim == 1 and ds.attrs.get("encoding-type") == "string-array"
                       and bool(ds.attrs.get("encoding-version")))
        if not well_formed:  # anything unusual goes through anndata's strict reader
            whole = self.index(key)
            return CellNames(len(whole), lambda a, b: whole.to_numpy()[a if b is None else slice(a, b)],
                             lambda: whole)

        def read(a, b) -> np.ndarray:
            values = ds.asstr()[a if b is None else slice(a, b)]
            return np.asarray(values, dtype=object)

        return CellNames(ds.shape[0], lambda a, b: self._guard(key, lambda: read(a, b)),
                         lambda: self.index(key))

    def index_matches(self, key: str, names: CellNames, chunk: int = 65536) -> bool:
        """Whether a dataframe's index equals ``names``, compared slice by slice (bounded memory)."""
        def _compare() -> bool:
            ds = self._index_dataset(key)
            if ds.shape != (len(names),) or ds.dtype.kind != "O":
                return False
            for a in range(0, len(names), chunk):
                if not np.array_equal(ds.asstr()[a : a + chunk], names.slice(a, a + chunk)):
                    return False
            return True

        return self._guard(key, _compare)

    def index(self, key: str) -> pd.Index:
        """The index of a dataframe element (``obs``, ``mod/rna/var``...)."""
        def _read() -> pd.Index:
            group = self._file[key]
            name = group.attrs["_index"]
            values = np.asarray(read_elem(group[name]))
            if values.dtype != object or not all(isinstance(v, str) for v in values):
                values = values.astype(str)  # bytes or numbers: normalise (object str arrays need no copy)
            return pd.Index(values, dtype=object)

        return self._guard(key, _read)

    def column(self, key: str, name: str) -> Any:
        """One column of a dataframe element, as a pandas Series-like array."""
        return self._guard(f"{key}/{name}", lambda: read_elem(self._file[key][name]))

    def columns(self, key: str) -> list[str]:
        """Column names of a dataframe element."""
        order = self._guard(key, lambda: self._file[key].attrs.get("column-order", []))
        return [str(c) for c in np.atleast_1d(order)]

    def shape(self, key: str) -> tuple[int, int]:
        """Shape of a matrix element (sparse group or dense dataset)."""
        def _shape() -> tuple[int, int]:
            elem = self._file[key]
            shape = elem.attrs["shape"] if isinstance(elem, h5py.Group) else elem.shape
            return tuple(int(x) for x in shape)  # type: ignore[return-value]

        return self._guard(key, _shape)

    def block(self, key: str, rows: np.ndarray, cols: np.ndarray | None):
        """Rows ``rows`` (sorted, unique) and columns ``cols`` (sorted, unique; ``None`` = all) of a matrix:
        a CSR matrix for a sparse element, an array for a dense one.

        A CSR element is read straight from its three datasets, over the span of ``rows`` when they are
        dense in it, and filtered to ``cols`` before anything is densified; other layouts (CSC, rows
        scattered over the file) go through anndata's backed matrix.
        """
        def _read():
            elem = self._file[key]
            if not isinstance(elem, h5py.Group):
                block = _take_rows(elem, rows)
                return np.asarray(block if cols is None else block[:, cols])
            n_cols = int(elem.attrs["shape"][1])
            span = int(rows[-1]) - int(rows[0]) + 1 if len(rows) else 0
            if elem.attrs.get("encoding-type") == "csr_matrix" and span <= 4 * len(rows) + 256:
                block = _csr_span(elem, int(rows[0]), span, n_cols, cols)
                return block if span == len(rows) else block[rows - rows[0]]
            block = _take_rows(sparse_dataset(elem), rows)
            block = sp.csr_matrix(block)
            _check_sparse(block)
            return block if cols is None else block[:, cols]

        return self._guard(key, _read)

    def _guard(self, key: str, fn):
        try:
            return fn()
        except UserError:
            raise
        except _READ_ERRORS as exc:
            raise UserError(f"cannot read '{key}' ({first_line(exc)})", self.source) from exc


def _plain_numeric(ds: h5py.h5d.DatasetID, first: h5py.h5d.DatasetID) -> bool:
    """Whether dataset ``ds`` is 1-d, numeric, of the same dtype and length as ``first``."""
    return len(ds.shape) == 1 and ds.dtype.kind in "biuf" and ds.dtype == first.dtype and ds.shape == first.shape


def _check_sparse(block) -> None:
    """A corrupt indptr/indices makes scipy's C code read out of bounds (a crash): refuse it first."""
    block.check_format(full_check=True)  # index bounds, but only when the (possibly corrupt) nnz > 0
    ptr = np.asarray(block.indptr, dtype=np.int64)
    if ptr[0] != 0 or ptr[-1] != len(block.indices) or (len(ptr) > 1 and np.diff(ptr).min() < 0):
        raise ValueError("inconsistent sparse matrix: indptr is not a non-decreasing 0..nnz sequence")


def _csr_span(elem: h5py.Group, lo: int, span: int, n_cols: int, cols: np.ndarray | None) -> sp.csr_matrix:
    """Rows ``lo:lo+span`` of an on-disk CSR matrix, restricted to ``cols``, checked before scipy sees them
    (a corrupt indptr or index makes scipy's C code read out of bounds)."""
    ptr = np.asarray(elem["indptr"][lo : lo + span + 1], dtype=np.int64)
    if len(ptr) != span + 1 or ptr[0] < 0 or (span and np.diff(ptr).min() < 0):
        raise ValueError("inconsistent sparse matrix: indptr is not a non-decreasing sequence")
    first, last = int(ptr[0]), int(ptr[-1])
    indices = np.asarray(elem["indices"][first:last])
    data = np.asarray(elem["data"][first:last])
    if len(indices) != last - first or len(data) != last - first:
        raise ValueError("inconsistent sparse matrix: indptr points past the stored entries")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"inconsistent sparse matrix: a column index is outside 0..{n_cols - 1}")
    ptr -= first
    if cols is None:
        return sp.csr_matrix((data, indices, ptr), shape=(span, n_cols))
    lookup = np.full(n_cols, -1, dtype=np.int64)
    lookup[cols] = np.arange(len(cols))
    mapped = lookup[indices]
    keep = mapped >= 0
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    return sp.csr_matrix((data[keep], mapped[keep], kept_before[ptr]), shape=(span, len(cols)))


def _take_rows(matrix, sorted_rows: np.ndarray):
    """Rows of an h5py dataset or backed sparse matrix; a contiguous run is read as a slice."""
    if len(sorted_rows) and sorted_rows[-1] - sorted_rows[0] + 1 == len(sorted_rows):
        return matrix[int(sorted_rows[0]) : int(sorted_rows[-1]) + 1]
    unique, inverse = np.unique(sorted_rows, return_inverse=True)
    return matrix[unique][inverse]


class MemoryStore:
    """The same questions answered from an in-memory ``MuData`` (an upstream model's ``.mdata``)."""

    def __init__(self, mdata: Any, source: str = "<in-memory MuData>") -> None:
        self.mdata = mdata
        self.source = source

    def close(self) -> None:
        """Nothing to close."""

    def _resolve(self, key: str) -> Any:
        parts = key.split("/")
        obj: Any = self.mdata
        i = 0
        while i < len(parts):
            part = parts[i]
            if part == "mod":
                obj = obj.mod[parts[i + 1]]
                i += 2
                continue
            if part in ("obs", "var"):
                obj = getattr(obj, part)
            elif part in ("uns", "layers", "obsm"):
                obj = getattr(obj, part)[parts[i + 1]]
                i += 1
            else:
                obj = obj[part]
            i += 1
        return obj

    def has(self, key: str) -> bool:
        """Whether the element exists."""
        try:
            self._resolve(key)
            return True
        except (KeyError, AttributeError, IndexError, TypeError):
            return False

    def read(self, key: str) -> Any:
        """The element itself."""
        return self._guard(key, lambda: self._resolve(key))

    def numeric_frame(self, key: str) -> pd.DataFrame | None:
        """``None``: the element is in memory already (:meth:`read` it)."""
        return None

    def index(self, key: str) -> pd.Index:
        """Index of a dataframe element."""
        return self._guard(key, lambda: pd.Index(self._resolve(key).index.astype(str)))

    def cell_names(self, key: str) -> CellNames:
        """The index of ``key`` (already in memory)."""
        whole = self.index(key)
        return CellNames(len(whole), lambda a, b: whole.to_numpy()[a if b is None else slice(a, b)], lambda: whole)

    def index_matches(self, key: str, names: CellNames) -> bool:
        """Whether a dataframe's index equals ``names``."""
        return self.index(key).equals(names.index)

    def column(self, key: str, name: str) -> Any:
        """One dataframe column."""
        return self._guard(f"{key}/{name}", lambda: self._resolve(key)[name])

    def columns(self, key: str) -> list[str]:
        """Column names of a dataframe element."""
        return self._guard(key, lambda: [str(c) for c in self._resolve(key).columns])

    def shape(self, key: str) -> tuple[int, int]:
        """Matrix shape."""
        return self._guard(key, lambda: tuple(int(x) for x in self._resolve(key).shape))

    def block(self, key: str, rows: np.ndarray, cols: np.ndarray | None):
        """Rows and columns of a matrix: CSR for a sparse one, an array for a dense one."""
        def _read():
            block = self._resolve(key)[rows]
            block = sp.csr_matrix(block) if sp.issparse(block) else np.asarray(block)
            return block if cols is None else block[:, cols]

        return self._guard(key, _read)

    def _guard(self, key: str, fn):
        try:
            return fn()
        except (KeyError, AttributeError, IndexError, TypeError, ValueError) as exc:
            raise UserError(f"cannot read '{key}' ({first_line(exc)})", self.source) from exc


Store = H5Store | MemoryStore


def open_store(data: str | Path | object, locking: bool | None = None) -> Store:
    """A store over an ``.h5mu`` path or an in-memory MuData (an open store is returned as is)."""
    if isinstance(data, (H5Store, MemoryStore)):
        return data
    if isinstance(data, (str, Path)):
        return H5Store(data, locking=locking)
    if hasattr(data, "mod") and hasattr(data, "obs"):
        return MemoryStore(data)
    raise UserError(f"data must be an .h5mu path or a MuData object, got {type(data).__name__}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (a data file's part of a run's identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
