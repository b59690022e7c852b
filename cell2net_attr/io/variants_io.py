"""The outputs of ``variants``: per gene, a table of variant effects per group, or the effect in every cell.

* ``.tsv``/``.csv``: one row per variant-gene pair (and group): ``variant`` (the given id, else
  ``chrom:pos:ref:alt``), ``gene``, ``peak``, ``offset`` (0-based in the stored sequence), ``ref``, ``alt``,
  [the ``--groupby`` column], ``n_cells``, ``mean_ref``, ``mean_alt`` (the mean rates with the reference and
  with the alternative base), ``delta = mean_alt - mean_ref`` and ``log2fc = log2(mean_alt / mean_ref)``;
  the run identity in the table's hidden sidecar (:func:`~cell2net_attr.io.schema.identity_sidecar`).
* ``.h5ad``: obs = the selected cells (their ``obs``), var = the variant-gene pairs named ``ID|GENE`` (columns
  as the table's), ``X = alt - ref`` per cell, layers ``ref`` and ``alt``; the attributes in ``uns``. Rows are
  written block by block as they are computed (bounded memory).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._compat import write_elem
from .schema import ENCODING_TYPES, ENCODING_VERSION, UNS_KEY, identity_sidecar
from .writers import AnnDataFile, atomic_output, io_errors, plain_value

#: The columns of a variant table; the group column, when there is one, comes after ``alt``.
VARIANT_COLUMNS = ("variant", "gene", "peak", "offset", "ref", "alt", "n_cells", "mean_ref", "mean_alt", "delta",
                   "log2fc")
TABLE_FORMATS = {"tsv": "\t", "csv": ","}


def _meta(attrs: dict) -> dict:
    return {**{k: plain_value(v) for k, v in attrs.items()}, "encoding-type": ENCODING_TYPES["variants"],
            "encoding-version": ENCODING_VERSION}


def variant_table(pairs: pd.DataFrame, labels: list[str], groupby: str | None, n_cells: np.ndarray,
                  ref_sum: np.ndarray, alt_sum: np.ndarray) -> pd.DataFrame:
    """The table of ``pairs`` (``variant, gene, peak, offset, ref, alt``, one row each) for every group.

    ``n_cells`` (G,), ``ref_sum`` (G,) and ``alt_sum`` (G, pairs) are sums of rates over each group's cells;
    groups without cells give no rows.
    """
    parts = []
    for g in np.flatnonzero(n_cells):
        part = pairs[list(VARIANT_COLUMNS[:6])].copy()
        if groupby is not None:
            part.insert(6, groupby, labels[g])
        mean_ref = ref_sum[g] / n_cells[g]
        mean_alt = alt_sum[g] / n_cells[g]
        part["n_cells"] = int(n_cells[g])
        part["mean_ref"], part["mean_alt"] = mean_ref, mean_alt
        part["delta"] = mean_alt - mean_ref
        with np.errstate(divide="ignore", invalid="ignore"):
            part["log2fc"] = np.log2(mean_alt / mean_ref)
        parts.append(part)
    columns = [*VARIANT_COLUMNS[:6], *([groupby] if groupby is not None else []), *VARIANT_COLUMNS[6:]]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def write_variant_table(path: Path, table: pd.DataFrame, fmt: str, attrs: dict) -> None:
    """The table as TSV or CSV, atomically, with the run identity in its sidecar."""
    with atomic_output(identity_sidecar(path)) as side, atomic_output(path) as tmp:
        side.write_text(json.dumps(_meta(attrs), sort_keys=True))
        table.to_csv(tmp, sep=TABLE_FORMATS[fmt], index=False, float_format="%.9g")


class VariantCellsWriter(AnnDataFile):
    """The per-cell ``.h5ad`` of one gene's variant effects, filled block by block of cells."""

    def __init__(self, path: Path, obs: pd.DataFrame, pairs: pd.DataFrame, attrs: dict,
                 locking: bool | None = None) -> None:
        super().__init__(path)
        n, v = len(obs), len(pairs)
        with io_errors(path, self.abort):
            self._open(obs, locking)
            self._x = self._matrix(self._f, "X", n, v)
            write_elem(self._f, "layers", {})
            self._layers = {name: self._matrix(self._f["layers"], name, n, v) for name in ("ref", "alt")}
            var = pairs.copy()
            var.index = pd.Index(pair_names(pairs), name="pair")
            write_elem(self._f, "var", var.astype({"offset": np.int64}))
            write_elem(self._f, "uns", {UNS_KEY: _meta(attrs)})
            for key in ("obsm", "varm", "obsp", "varp"):
                write_elem(self._f, key, {})

    def write_cells(self, start: int, ref: np.ndarray, alt: np.ndarray) -> None:
        """Rows ``start..start+len(ref)``: the reference rate (B,) and every pair's alternative rate (B, V)."""
        stop = start + len(ref)
        with io_errors(self.path):
            self._layers["alt"][start:stop] = alt
            self._layers["ref"][start:stop] = np.broadcast_to(ref[:, None], alt.shape)
            self._x[start:stop] = alt - ref[:, None]


def pair_names(pairs: pd.DataFrame) -> Sequence[str]:
    """``ID|GENE`` of each variant-gene pair (an ``.h5ad``'s var names)."""
    return [f"{i}|{g}" for i, g in zip(pairs["variant"], pairs["gene"])]
