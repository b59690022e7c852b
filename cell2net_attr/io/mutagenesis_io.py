"""The outputs of ``mutagenesis``: upstream's (4, L) ``.npy``, or every peak, position, base and group in HDF5
or AnnData, with the reference sequences, the run identity and provenance, written atomically.

* ``.npy``: upstream's array, the effect (4, L) of one peak over one group of cells (the run identity in
  its hidden sidecar, :func:`~cell2net_attr.io.schema.identity_sidecar`); with ``--return-seq`` the one-hot
  reference (4, L) beside it, as ``<stem>.seq.npy``.
* ``.h5``: ``effect`` (groups, peaks, 4, L) float64 (as upstream's), upstream's effect; ``mean_alt`` (groups, peaks, 4, L)
  float64, each base's mean rate over the group's cells (NaN at the stored base, whose rate is
  ``mean_ref``); ``mean_ref`` (groups,) the mean rate with the stored sequences; ``n_cells`` (groups,);
  ``peak_names``, ``sequences`` (the stored sequences) and ``group_names``; attributes as every output.
* ``.h5ad``: obs = groups (``n_cells``, ``mean_ref``), var = one row per peak, position and base (``peak``,
  ``position`` 0-based in the stored sequence, ``base``, ``ref_base``), ``X`` = the effect, layer
  ``mean_alt``; the attributes and the sequences in ``uns["cell2net_attr"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import UserError, first_line
from .formats import OutputFormat
from .schema import ENCODING_TYPES, ENCODING_VERSION, UNS_KEY, identity_sidecar
from .writers import atomic_output, plain_value

BASES = "ACGT"


@dataclass
class MutagenesisResult:
    """Saturation mutagenesis of a gene's peaks, per group of cells."""

    gene: str
    peaks: list[str]
    sequences: list[str]
    groups: list[str]  # ["all cells"] without --groupby
    groupby: str | None
    n_cells: np.ndarray  # (G,)
    mean_ref: np.ndarray  # (G,)
    mean_alt: np.ndarray  # (G, P, 4, L) float64, NaN at each position's stored base
    effect: np.ndarray  # (G, P, 4, L) float64, as upstream's

    def onehot(self, peak: int) -> np.ndarray:
        """The stored sequence of peak ``peak`` one-hot, (4, L) float32 (N: a zero column), as upstream returns it."""
        codes = np.frombuffer(self.sequences[peak].upper().encode("ascii"), dtype=np.uint8)
        return (codes[None, :] == np.frombuffer(BASES.encode(), dtype=np.uint8)[:, None]).astype(np.float32)


def seq_path(out: Path) -> Path:
    """Where ``--return-seq`` puts the one-hot reference beside a ``.npy`` output."""
    return out.with_name(f"{out.stem}.seq.npy")


def check_mutagenesis_output(fmt: OutputFormat, n_peaks: int, n_groups: int, out: Path) -> None:
    """A ``.npy`` holds upstream's one array: one peak, no groups."""
    if fmt.name == "npy" and (n_peaks != 1 or n_groups != 1):
        raise UserError(f"a .npy output is upstream's (4, L) array of one peak over all its cells; this run has "
                        f"{n_peaks} peak(s) and {n_groups} group(s): use .h5 or .h5ad", out)


def write_mutagenesis(path: Path, fmt: OutputFormat, result: MutagenesisResult, attrs: dict,
                      return_seq: bool = False) -> None:
    """Write ``result`` to ``path`` in ``fmt``, atomically (``attrs``: encoding, identity, provenance)."""
    attrs = {**attrs, "encoding-type": ENCODING_TYPES["mutagenesis"], "encoding-version": ENCODING_VERSION}
    if fmt.name == "npy":
        if return_seq:
            with atomic_output(seq_path(path)) as tmp, open(tmp, "wb") as fh:
                np.save(fh, result.onehot(0))
        with atomic_output(identity_sidecar(path)) as side, atomic_output(path) as tmp:
            side.write_text(json.dumps({k: plain_value(v) for k, v in attrs.items()}, sort_keys=True))
            with open(tmp, "wb") as fh:
                np.save(fh, result.effect[0, 0])
        return
    with atomic_output(path) as tmp:
        (_write_h5 if fmt.name == "h5" else _write_h5ad)(tmp, result, attrs)


def _strings(values: list[str]) -> np.ndarray:
    return np.asarray(values, dtype=object)


def _write_h5(tmp: Path, r: MutagenesisResult, attrs: dict) -> None:
    string = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        f.create_dataset("effect", data=r.effect, compression="gzip")
        f.create_dataset("mean_alt", data=r.mean_alt, compression="gzip")
        f.create_dataset("mean_ref", data=r.mean_ref)
        f.create_dataset("n_cells", data=r.n_cells.astype(np.int64))
        for name, values in (("peak_names", r.peaks), ("sequences", r.sequences), ("group_names", r.groups)):
            f.create_dataset(name, data=_strings(values), dtype=string)
        for key, value in {**attrs, "groupby": r.groupby or ""}.items():
            f.attrs[key] = plain_value(value)


def _var(r: MutagenesisResult) -> pd.DataFrame:
    """One row per peak, position and base, in the order of ``effect[g].reshape(-1)``."""
    length = r.effect.shape[-1]
    peak = np.repeat(np.arange(len(r.peaks)), 4 * length)
    base = np.tile(np.repeat(np.arange(4), length), len(r.peaks))
    position = np.tile(np.arange(length), 4 * len(r.peaks))
    ref = np.array([list(s.upper()) for s in r.sequences], dtype=object)[peak, position]
    names = [f"{r.peaks[p]}:{i}:{BASES[b]}" for p, i, b in zip(peak, position, base)]
    return pd.DataFrame({"peak": pd.Categorical(np.asarray(r.peaks, dtype=object)[peak], categories=r.peaks),
                         "position": position, "base": pd.Categorical([BASES[b] for b in base], categories=list(BASES)),
                         "ref_base": ref.astype(str)}, index=pd.Index(names, name="mutation"))


def _write_h5ad(tmp: Path, r: MutagenesisResult, attrs: dict) -> None:
    import anndata as ad

    groups = len(r.groups)
    obs = pd.DataFrame({"n_cells": r.n_cells.astype(np.int64), "mean_ref": r.mean_ref},
                       index=pd.Index([str(g) for g in r.groups], name=r.groupby or "group"))
    adata = ad.AnnData(X=r.effect.reshape(groups, -1), obs=obs, var=_var(r))
    adata.layers["mean_alt"] = r.mean_alt.reshape(groups, -1)
    adata.uns[UNS_KEY] = {**{k: plain_value(v) for k, v in attrs.items()}, "groupby": r.groupby or "",
                          "peaks": list(r.peaks), "sequences": list(r.sequences)}
    adata.write_h5ad(tmp)


def read_mutagenesis(path: str | Path) -> MutagenesisResult:
    """A ``mutagenesis`` output (``.h5`` or ``.h5ad``) read back."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".h5ad":
            import anndata as ad

            a = ad.read_h5ad(path)
            meta = a.uns[UNS_KEY]
            peaks, seqs = [str(p) for p in meta["peaks"]], [str(s) for s in meta["sequences"]]
            shape = (a.n_obs, len(peaks), 4, len(seqs[0]))
            return MutagenesisResult(str(meta["gene"]), peaks, seqs, [str(g) for g in a.obs_names],
                                     str(meta["groupby"]) or None, a.obs["n_cells"].to_numpy(),
                                     a.obs["mean_ref"].to_numpy(), np.asarray(a.layers["mean_alt"]).reshape(shape),
                                     np.asarray(a.X).reshape(shape))
        with h5py.File(path, "r") as f:
            names = {k: [str(v) for v in f[k].asstr()[:]] for k in ("peak_names", "sequences", "group_names")}
            return MutagenesisResult(str(f.attrs["gene"]), names["peak_names"], names["sequences"],
                                     names["group_names"], str(f.attrs["groupby"]) or None, f["n_cells"][:],
                                     f["mean_ref"][:], f["mean_alt"][:], f["effect"][:])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"not a readable mutagenesis output ({first_line(exc, 120)})", path) from exc
