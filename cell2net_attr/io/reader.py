"""The reader of our own attribution outputs for the downstream commands: HDF5 (``.h5``/``.hdf5``) and AnnData
(``.h5ad``), checked; their headers and rows come through the format registry (:mod:`.formats`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .._compat import read_elem
from ..errors import UserError, first_line
from .formats import format_of, read_header, read_matrix
from .layouts import index_names
from .schema import ENCODING_TYPES, FEATURE_LABEL, FEATURE_NAMES, UNS_KEY


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


def read_attributions(path: str | Path) -> Attributions:
    """Read and check one attribution file written by ``cell2net-attr run``: HDF5 (``.h5``/``.hdf5``) or
    AnnData (``.h5ad``: ``X`` cells x TFs, ``var`` = TFs, the run's parameters in ``uns["cell2net_attr"]``).

    The gene is the file's ``gene`` attribute (its stem when absent). Raises :class:`UserError` when
    the file is not such a file, its axes disagree, a name repeats or a value is NaN/Inf.
    """
    header = read_header(path)
    path, obs, tfs, meta = header.path, header.obs, header.features, header.attrs
    values = read_matrix(header)
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
    if format_of(path).name != "h5ad":
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
            names, values = index_names(f["obs"]), read_elem(f["obs"][column])
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
