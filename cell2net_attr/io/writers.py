"""Output writers: ``.npy``, HDF5 and AnnData, written under a temporary name and renamed when complete.

A writer is opened with the final shape, receives row blocks in any order with
:meth:`write`, and is either committed (atomic rename into place) or aborted (the
temporary file is removed). Nothing partial is ever left at the final path. Which writer a path
gets is the format registry's choice (:mod:`cell2net_attr.io.formats`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import pandas as pd

from .._compat import write_elem
from ..errors import UserError, first_line
from .schema import (
    ANNDATA_ENCODING,
    ARRAY_ENCODING,
    ATTRIBUTIONS,
    DELTA,
    FEATURE_NAMES,
    OBS_NAMES,
    UNS_KEY,
    VAR_INDEX_NAME,
    identity_sidecar,
)
from .storage import Storage

NAME_BLOCK = 65536  # cell names written per block
CHUNK_ROWS = 4096  # rows per HDF5 chunk of the per-cell values


def allocated_rows(n: int) -> int:
    """Rows an uncompressed chunked dataset of ``n`` rows takes on disk: whole chunks are allocated."""
    chunk = max(1, min(n, CHUNK_ROWS))
    return -(-n // chunk) * chunk


class Writer(Protocol):
    """Receives blocks of rows and is then committed or aborted."""

    path: Path

    def write(self, start: int, attr: np.ndarray, delta: np.ndarray | None) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def check_output_path(path: Path, overwrite: bool, inputs=()) -> None:
    """The checks every output shares: directory present and writable, not an input, no clobbering."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError("output directory does not exist", parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError("output directory is not writable", parent)
    resolved = path.resolve()
    for inp in inputs:
        if Path(inp).exists() and Path(inp).resolve() == resolved:
            raise UserError("output would overwrite an input file", path)
    if path.exists() and not overwrite:
        raise UserError("output exists; pass --overwrite to replace it", path)
    if path.is_dir():
        raise UserError("output path is a directory", path)


@contextlib.contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; on success rename it into place, else remove it."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_path(path: Path) -> Path:
    """Hidden in-progress name in the same directory, so the final rename is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def io_errors(path: Path, cleanup: Callable[[], None] | None = None):
    """Report a failed write (h5py raises RuntimeError for some) as a UserError, after ``cleanup``;
    anything else passes through."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if cleanup is not None:
            cleanup()
        if not _is_io_failure(exc):
            raise
        raise os_error(exc, path) from exc


class TempFileWriter:
    """Shared commit/abort for writers of a temporary file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temp_path(path)

    def _close(self) -> None:  # overridden
        pass

    def commit(self) -> None:
        """Flush, close and move into place."""
        with io_errors(self.path, self.abort):
            self._close()
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            self._close()
        except (OSError, ValueError, RuntimeError):
            pass
        self.tmp.unlink(missing_ok=True)


class NpyWriter(TempFileWriter):
    """float32 (or float16) cells x features ``.npy`` through a memory map. The array cannot carry the run's
    identity, so it goes to a hidden sidecar (:func:`~cell2net_attr.io.schema.identity_sidecar`), written
    first at commit: a rerun can then tell which run an existing ``.npy`` is from."""

    def __init__(self, path: Path, n_rows: int, n_cols: int, meta: dict | None = None,
                 dtype: np.dtype = np.dtype(np.float32)) -> None:
        super().__init__(path)
        self._meta = meta
        with io_errors(path, self.abort):
            self._mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=(n_rows, n_cols))
            _reserve(self.tmp)

    def commit(self) -> None:
        """The array, then its identity sidecar, each moved into place atomically (a failed array leaves
        neither; an array whose sidecar is missing is refused by a rerun, never taken for done)."""
        if self._meta is None:
            return super().commit()
        sidecar = identity_sidecar(self.path)
        with atomic_output(sidecar) as tmp:
            tmp.write_text(json.dumps({k: plain_value(v) for k, v in self._meta.items()}, sort_keys=True))
            super().commit()

    def write(self, start: int, attr: np.ndarray, delta: np.ndarray | None) -> None:
        """Store a block of rows."""
        self._mm[start : start + len(attr)] = attr

    def _close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            self._mm.flush()
            self._mm = None


def _reserve(path: Path) -> None:
    """Allocate a (sparse) file's blocks now: a full disk then fails here with ENOSPC, instead of
    killing the process with SIGBUS at a later write through the memory map (leaving the temporary)."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        # EOPNOTSUPP, EINVAL...: the file system cannot preallocate; write as before
    finally:
        os.close(fd)


class H5Writer(TempFileWriter):
    """HDF5 with ``attributions`` (cells x features), ``obs_names``, the feature names (TFs or peaks),
    optional ``convergence_delta``, and the metadata as attributes. The attributions have the type and
    compression of ``storage``, chunked by rows as written."""

    def __init__(self, path: Path, obs_names: Sequence[str], features: list[str], meta: dict,
                 with_delta: bool, locking: bool | None = None, storage: Storage = Storage()) -> None:
        super().__init__(path)
        n, t = len(obs_names), len(features)
        with io_errors(path, self.abort):
            self._f = h5py.File(self.tmp, "w", locking=locking)
            chunk_rows = max(1, min(n, CHUNK_ROWS))
            self._attr = self._f.create_dataset(ATTRIBUTIONS, shape=(n, t), maxshape=(None, t),
                                                chunks=(chunk_rows, t), **storage.dataset_options())
            string = h5py.string_dtype()
            names = self._f.create_dataset(OBS_NAMES, shape=(n,), dtype=string)
            for a in range(0, n, NAME_BLOCK):  # in blocks: the names need not all be in memory
                names[a : a + NAME_BLOCK] = np.asarray(obs_names[a : a + NAME_BLOCK], dtype=object)
            self._f.create_dataset(FEATURE_NAMES[meta.get("target", "tfs")], data=np.asarray(features, dtype=object),
                                   dtype=string)
            self._delta = (self._f.create_dataset(DELTA, shape=(n,), maxshape=(None,), dtype="f4",
                                                  chunks=(chunk_rows,)) if with_delta else None)
            for key, value in meta.items():
                self._f.attrs[key] = value

    def write(self, start: int, attr: np.ndarray, delta: np.ndarray | None) -> None:
        """Store a block of rows (and their deltas)."""
        with io_errors(self.path):
            self._attr[start : start + len(attr)] = attr
            if self._delta is not None and delta is not None:
                self._delta[start : start + len(delta)] = delta

    def _close(self) -> None:
        if getattr(self, "_f", None) is not None:
            self._f.close()
            self._f = None


class AnnDataFile(TempFileWriter):
    """An ``.h5ad`` filled block by block: its root and a dense matrix laid out as anndata reads them, ``obs``
    written last (at commit: it may carry what is known only at the end), nothing when aborted."""

    def _open(self, obs: pd.DataFrame, locking: bool | None) -> None:
        self._obs = obs
        self._f = h5py.File(self.tmp, "w", locking=locking)
        self._f.attrs.update(ANNDATA_ENCODING)

    def _matrix(self, group, name: str, n: int, t: int, storage: Storage = Storage()):
        """A dense (n, t) array chunked by rows, with anndata's encoding, stored as ``storage`` says."""
        ds = group.create_dataset(name, shape=(n, t), chunks=(max(1, min(n, CHUNK_ROWS)), t) if t else None,
                                  **storage.dataset_options())
        ds.attrs.update(ARRAY_ENCODING)
        return ds

    def _final_obs(self) -> pd.DataFrame:
        return self._obs

    def _close(self) -> None:
        if getattr(self, "_f", None) is not None:
            if self._obs is not None:
                write_elem(self._f, "obs", self._final_obs())
                self._obs = None
            self._f.close()
            self._f = None

    def abort(self) -> None:
        """Delete the temporary file without writing obs."""
        self._obs = None
        super().abort()


class H5adWriter(AnnDataFile):
    """AnnData ``.h5ad``: ``X`` cells x features (filled block by block), ``obs`` of the selected cells,
    ``var`` indexed by the feature names, the run's parameters and provenance in ``uns["cell2net_attr"]``;
    the convergence delta, when asked, is ``obs["convergence_delta"]``. ``X`` has the type and compression
    of ``storage``."""

    def __init__(self, path: Path, obs: pd.DataFrame, features: list[str], meta: dict, with_delta: bool,
                 locking: bool | None = None, storage: Storage = Storage()) -> None:
        super().__init__(path)
        n, t = len(obs), len(features)
        self._delta = np.zeros(n, dtype=np.float32) if with_delta else None
        with io_errors(path, self.abort):
            self._open(obs, locking)
            self._x = self._matrix(self._f, "X", n, t, storage)
            label = VAR_INDEX_NAME[meta.get("target", "tfs")]
            write_elem(self._f, "var", pd.DataFrame(index=pd.Index(features, name=label)))
            write_elem(self._f, "uns", {UNS_KEY: {k: plain_value(v) for k, v in meta.items()}})
            for key in ("obsm", "varm", "obsp", "varp", "layers"):
                write_elem(self._f, key, {})

    def write(self, start: int, attr: np.ndarray, delta: np.ndarray | None) -> None:
        """Store a block of rows."""
        with io_errors(self.path):
            self._x[start : start + len(attr)] = attr
        if self._delta is not None and delta is not None:
            self._delta[start : start + len(delta)] = delta

    def _final_obs(self) -> pd.DataFrame:
        obs = self._obs.copy()  # the deltas are known only at the end
        if self._delta is not None:
            obs[DELTA] = self._delta
        return obs


def plain_value(value):
    """A metadata value as a plain Python type (numpy scalars -> Python), for ``uns`` and JSON."""
    return value.item() if isinstance(value, np.generic) else value


def open_npy(path: Path, obs_names: Sequence[str], features: list[str], meta: dict, with_delta: bool,
             locking: bool | None = None, obs_table: Callable[[], pd.DataFrame] | None = None,
             storage: Storage = Storage()) -> Writer:
    """A ``.npy`` writer (the matrix alone; the identity in its sidecar)."""
    n, t = len(obs_names), len(features)
    storage.check("npy", str(path))
    check_space(path, n * t * storage.itemsize + 4096)
    return NpyWriter(path, n, t, meta, storage.numpy_dtype)


def open_h5(path: Path, obs_names: Sequence[str], features: list[str], meta: dict, with_delta: bool,
            locking: bool | None = None, obs_table: Callable[[], pd.DataFrame] | None = None,
            storage: Storage = Storage()) -> Writer:
    """An HDF5 writer, after checking that the disk can hold the output (uncompressed: the most it takes)."""
    n, t = len(obs_names), len(features)
    rows = allocated_rows(n)  # as H5Writer chunks
    sample = obs_names[0:1000]  # name sizes estimated from a sample
    names = sum(len(str(s).encode()) + 16 for s in sample) * n // max(len(sample), 1)
    names += sum(len(str(s).encode()) + 16 for s in features)
    check_space(path, rows * t * storage.itemsize + (rows * 4 if with_delta else 0) + names + (32 << 10))
    return H5Writer(path, obs_names, features, meta, with_delta, locking, storage)


def open_h5ad(path: Path, obs_names: Sequence[str], features: list[str], meta: dict, with_delta: bool,
              locking: bool | None = None, obs_table: Callable[[], pd.DataFrame] | None = None,
              storage: Storage = Storage()) -> Writer:
    """An AnnData writer; ``obs_table`` supplies the selected cells' obs (their names alone without it)."""
    n, t = len(obs_names), len(features)
    index = pd.Index([str(o) for o in obs_names[0:n]])  # AnnData obs is whole anyway
    obs = obs_table() if obs_table is not None else pd.DataFrame(index=index)
    obs.index = index
    check_space(path, n * t * storage.itemsize + n * (8 * obs.shape[1] + 48) + (64 << 10))
    return H5adWriter(path, obs, features, meta, with_delta, locking, storage)


def check_space(path: Path, needed: int) -> None:
    """Refuse up front an output the disk cannot hold: HDF5 does not survive running out of space
    mid-file (it crashes when the process exits)."""
    try:
        free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    except OSError:
        return
    if free < needed:
        raise UserError(f"disk full: the output needs about {_size(needed)} but only {_size(free)} is free", path)


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _is_io_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or "write failed" in str(exc) or "No space" in str(exc)


def os_error(exc: BaseException, path: Path) -> UserError:
    """The user-facing error for a failed write (disk full named as such)."""
    code, text = getattr(exc, "errno", None), str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space" in text or "errno = 28," in text:
        return UserError("disk full while writing the output; nothing was left at the final path", path)
    detail = getattr(exc, "strerror", None) or first_line(exc)
    return UserError(f"cannot write output ({detail})", path)
