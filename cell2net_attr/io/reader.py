"""The one reader of our own attribution outputs: HDF5 (``.h5``/``.hdf5``) and AnnData (``.h5ad``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .._compat import read_elem
from ..errors import UserError, first_line
from .schema import ATTRIBUTIONS, DELTA, ENCODING_TYPES, FEATURE_LABEL, FEATURE_NAMES, OBS_NAMES, UNS_KEY


@dataclass
class Attributions:
    """One attribution file: cells x features (TFs or peaks, by ``target``) float32 with the names of both axes."""

    path: Path
    gene: str
    obs_names: pd.Index
    features: list[str]
    values: np.ndarray
    shard: tuple[int, int] | None = None  # (index, count) when the file is one shard of a run
    target: str = "tfs"


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _index_names(frame: h5py.Group) -> list[str]:
    """The index of an AnnData dataframe group (``obs``, ``var``) as strings."""
    return _strings(np.asarray(read_elem(frame[frame.attrs["_index"]])))


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


def read_header(path: str | Path) -> Header:
    """The header of an HDF5 (``.h5``/``.hdf5``) or AnnData (``.h5ad``) attribution file; the matrix is
    only measured. Raises :class:`UserError` when the file is unreadable or not one of ours."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            return _header_h5ad(f, path) if path.suffix.lower() == ".h5ad" else _header_h5(f, path)
    except OSError as exc:
        raise UserError(f"not a readable HDF5 file ({first_line(exc, 120)})", path) from exc
    except (KeyError, ValueError, TypeError) as exc:  # a damaged or foreign layout
        raise UserError(f"cannot read the attribution file ({first_line(exc, 120)})", path) from exc


def _header_h5(f: h5py.File, path: Path) -> Header:
    attrs = dict(f.attrs)
    names = FEATURE_NAMES.get(str(attrs.get("target", "tfs")), FEATURE_NAMES["tfs"])
    missing = [k for k in (ATTRIBUTIONS, OBS_NAMES, names) if k not in f]
    if missing:
        raise UserError(f"not a cell2net-attr attribution file: no {missing[0]!r} dataset", path)
    return Header(path, "h5", attrs, _strings(f[OBS_NAMES][()]), _strings(f[names][()]), f[ATTRIBUTIONS].shape[0],
                  DELTA in f)


def _header_h5ad(f: h5py.File, path: Path) -> Header:
    missing = [k for k in ("X", "obs", "var") if k not in f]
    if missing:
        raise UserError(f"not an AnnData attribution file: no {missing[0]!r}", path)
    try:
        obs, var = _index_names(f["obs"]), _index_names(f["var"])
        meta = read_elem(f[f"uns/{UNS_KEY}"]) if f"uns/{UNS_KEY}" in f else {}
        x = f["X"]  # a dataset, or a group when X is stored sparse (its shape is an attribute)
        n_rows = int(x.attrs["shape"][0]) if isinstance(x, h5py.Group) else x.shape[0]
        return Header(path, "h5ad", dict(meta) if isinstance(meta, dict) else {}, obs, var, n_rows, DELTA in f["obs"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read the AnnData file ({first_line(exc, 120)})", path) from exc


def _read_matrix(header: Header) -> np.ndarray:
    """The attribution matrix of the file ``header`` describes, as float32."""
    try:
        with h5py.File(header.path, "r") as f:
            x = f[ATTRIBUTIONS][()] if header.fmt == "h5" else read_elem(f["X"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read the attributions ({first_line(exc, 120)})", header.path) from exc
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def read_attributions(path: str | Path) -> Attributions:
    """Read and check one attribution file written by ``cell2net-attr run``: HDF5 (``.h5``/``.hdf5``) or
    AnnData (``.h5ad``: ``X`` cells x TFs, ``var`` = TFs, the run's parameters in ``uns["cell2net_attr"]``).

    The gene is the file's ``gene`` attribute (its stem when absent). Raises :class:`UserError` when
    the file is not such a file, its axes disagree, a name repeats or a value is NaN/Inf.
    """
    header = read_header(path)
    path, obs, tfs, meta = header.path, header.obs, header.features, header.attrs
    values = _read_matrix(header)
    gene = meta.get("gene", path.stem)
    gene = gene.decode() if isinstance(gene, bytes) else str(gene)
    target = meta.get("target", "tfs")
    target = target.decode() if isinstance(target, bytes) else str(target)
    if target not in FEATURE_NAMES:
        raise UserError(f"unknown attribution target {target!r}", path)
    count = int(meta.get("shard_count", 1))
    shard = (int(meta.get("shard_index", 0)), count) if count > 1 else None
    if values.ndim != 2 or values.shape != (len(obs), len(tfs)):
        raise UserError(f"attributions have shape {list(values.shape)} but the file names {len(obs)} cells and "
                        f"{len(tfs)} {FEATURE_LABEL[target]}s", path)
    if not obs:
        raise UserError("the file holds zero cells", path)
    for what, names in (("cell", obs), (FEATURE_LABEL[target], tfs)):
        seen = pd.Index(names)
        if not seen.is_unique:
            raise UserError(f"{what} {seen[seen.duplicated()][0]!r} appears more than once", path)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"attribution of cell {obs[r]!r} for {tfs[c]!r} is {values[r, c]}", path)
    return Attributions(path, gene, pd.Index(obs), tfs, values, shard, target)


def read_obs_columns(path: str | Path) -> list[str]:
    """The ``obs`` columns an AnnData attribution file carries (none for HDF5 outputs)."""
    path = Path(path)
    if path.suffix.lower() != ".h5ad":
        return []
    try:
        with h5py.File(path, "r") as f:
            return [str(c) for c in f["obs"].attrs.get("column-order", [])] if "obs" in f else []
    except OSError as exc:
        raise UserError(f"not a readable HDF5 file ({first_line(exc, 120)})", path) from exc


def read_obs_column(path: str | Path, column: str) -> pd.Series:
    """One ``obs`` column of an AnnData attribution file, indexed by cell name (categories kept)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            names, values = _index_names(f["obs"]), read_elem(f["obs"][column])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read obs column {column!r} ({first_line(exc, 120)})",
                        path) from exc
    return pd.Series(values, index=pd.Index(names))


def declared_kind(path: str | Path) -> str:
    """What an HDF5 file says it is, by its ``encoding-type``: a key of :data:`ENCODING_TYPES` for our outputs
    (``attributions``, ``summary``, ``activity``), ``mudata`` or ``anndata`` for other such files, ``""`` when
    it declares nothing or is not a readable HDF5 file.

    Summary and activity AnnData written before they carried an ``encoding-type`` are told by
    ``uns[UNS_KEY]["kind"]``.
    """
    ours = {v: k for k, v in ENCODING_TYPES.items()}
    try:
        with h5py.File(Path(path), "r") as f:
            root = _text(f.attrs.get("encoding-type", ""))
            meta = f.get(f"uns/{UNS_KEY}") if root.lower() == "anndata" else None
            if not isinstance(meta, h5py.Group):
                return ours.get(root, root.lower() if root.lower() in ("mudata", "anndata") else "")
            declared = _text(meta["encoding-type"][()]) if "encoding-type" in meta else ""
            legacy = _text(meta["kind"][()]) if "kind" in meta else ""
    except (OSError, KeyError, ValueError, TypeError):
        return ""
    return ours.get(declared) or (legacy if legacy in ("summary", "activity") else "anndata")


def _text(value) -> str:
    """An HDF5 attribute or scalar dataset as text."""
    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
    return value.decode() if isinstance(value, bytes) else str(value)
