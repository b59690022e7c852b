"""The output contract: every name our outputs use, their encoding version, and the run identity.

One home for what `run` writes, `--resume` compares, `merge` checks and the readers expect:

* HDF5 (``.h5``/``.hdf5``): datasets :data:`ATTRIBUTIONS` (cells x features, float32 or float16, optionally
  compressed: :mod:`.storage`),
  :data:`OBS_NAMES`, the feature names (:data:`FEATURE_NAMES` of the target), optionally
  :data:`DELTA`; the run's identity, provenance and shard place as root attributes, with
  ``encoding-type`` :data:`ENCODING_TYPE` and ``encoding-version`` :data:`ENCODING_VERSION`.
* AnnData (``.h5ad``): ``X`` = attributions, ``var`` = the features, ``obs`` = the cells (with
  ``convergence_delta``), the same attributes in ``uns[UNS_KEY]``.
* ``.npy``: the matrix alone (no names, so it cannot be sharded or merged); its identity and provenance
  in a hidden sidecar beside it (:func:`identity_sidecar`), so that a rerun can tell which run made it.

:class:`RunIdentity` holds everything that changes what is stored: two outputs, a resumed run and
its saved chunks, or the shards of one run belong together only when their identities are equal.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UserError

ENCODING_TYPE = "cell2net-attr"
ENCODING_VERSION = "1.0.0"
#: The ``encoding-type`` of each kind of output: attribution files (root attributes of ``.h5``,
#: ``uns[UNS_KEY]`` of ``.h5ad``), and the AnnData outputs of ``summarize`` and ``activity`` (``uns[UNS_KEY]``).
ENCODING_TYPES = {"attributions": ENCODING_TYPE, "summary": "cell2net-attr-summary",
                  "activity": "cell2net-attr-activity", "mutagenesis": "cell2net-attr-mutagenesis",
                  "variants": "cell2net-attr-variants"}

ATTRIBUTIONS = "attributions"
OBS_NAMES = "obs_names"
DELTA = "convergence_delta"
FEATURE_NAMES = {"tfs": "tf_names", "peaks": "peak_names"}
#: What one feature of a target is called in messages and figures.
FEATURE_LABEL = {"tfs": "TF", "peaks": "peak"}
#: The name of an AnnData output's ``var`` index, by target (also the feature column of summary tables).
VAR_INDEX_NAME = {"tfs": "tf", "peaks": "peak"}
UNS_KEY = "cell2net_attr"
#: The encoding attributes anndata expects on an ``.h5ad`` file's root and on a dense ``X``.
ANNDATA_ENCODING = {"encoding-type": "anndata", "encoding-version": "0.1.0"}
ARRAY_ENCODING = {"encoding-type": "array", "encoding-version": "0.2.0"}

#: Output suffixes and the format each names (the one list: the registry in :mod:`.formats` and the
#: command line's ``--format`` choices derive from it).
SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".h5ad": "h5ad", ".npy": "npy"}
FORMAT_NAMES = tuple(dict.fromkeys(SUFFIXES.values()))
#: Why ``.npy`` outputs cannot be shards: ``merge`` joins rows by cell name, which ``.npy`` does not carry.
NPY_CANNOT_MERGE = ".npy outputs have no cell names and cannot be merged; shard into .h5 or .h5ad"

#: Attributes that say where and by what an output was made; they may differ between shards and resumes.
PROVENANCE = ("device", "tool", "tool_version", "checkpoint", "data", "data_layout", "merged_from")


class _Identity:
    """What every run identity shares: plain attributes, comparison, and reading back by field type."""

    def attrs(self) -> dict[str, Any]:
        """Plain attribute values (for HDF5 attributes, ``uns`` and JSON)."""
        return asdict(self)  # type: ignore[call-overload]

    def differences(self, other: _Identity) -> list[str]:
        """Names of the fields that differ from ``other``'s (all of them when it is another kind of run)."""
        if type(other) is not type(self):
            return [f.name for f in fields(self)]  # type: ignore[arg-type]
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]  # type: ignore

    def first_difference(self, other: _Identity) -> tuple[str, str, str] | None:
        """The first field that differs from ``other``'s as message text: its label, this value, ``other``'s
        (digests shortened); None when the identities are equal."""
        if type(other) is not type(self):
            return "kind of output", type(self).KIND, type(other).KIND  # type: ignore[attr-defined]
        differ = self.differences(other)
        if not differ:
            return None
        key = differ[0]
        return IDENTITY_LABELS.get(key, key), _shown(getattr(self, key)), _shown(getattr(other, key))

    @classmethod
    def _typed(cls, values: dict[str, Any], source: str | Path):
        """An identity from stored values, each converted to its field's type; a missing field without a
        default (one added after the first outputs were written) is an error."""
        missing = [f.name for f in fields(cls)  # type: ignore[arg-type]
                   if f.name not in values and f.default is MISSING]
        if missing:
            raise UserError(f"not a cell2net-attr output (lacks {', '.join(missing[:3])})", source)
        convert = {"int": int, "bool": bool, "str": str}
        return cls(**{f.name: convert[str(f.type)](values[f.name])  # type: ignore[call-arg, arg-type]
                      for f in fields(cls) if f.name in values})  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunIdentity(_Identity):
    """What an attribution output stores, beyond the numbers themselves."""

    KIND = "attributions"

    target: str
    gene: str
    engine: str
    method: str
    n_steps: int
    multiply_by_inputs: bool
    module_mode: str
    seed: int
    delta: bool
    format: str
    covariates: str
    checkpoint_sha256: str
    data_sha256: str
    selection_sha256: str
    n_rows_total: int
    shard_count: int
    baseline: str = "zero"
    dtype: str = "float32"  # outputs written before --dtype and --compression are float32, uncompressed
    compression: str = "none"

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], source: str | Path, has_delta: bool = False,
                   fmt: str = "h5") -> RunIdentity:
        """The identity stored in an output's attributes.

        Outputs written before the encoding version 1.0.0 lack ``target``, ``delta`` and ``format``:
        they were TF attributions, with a delta when the dataset is there, in the file's own format.
        """
        values = {k: _plain(v) for k, v in attrs.items()}
        values.setdefault("target", "tfs")
        values.setdefault("delta", has_delta)
        values.setdefault("format", fmt)
        return cls._typed(values, source)


@dataclass(frozen=True)
class PredictionIdentity(_Identity):
    """What an output of predicted rates stores (``mutagenesis``, ``variants``): the model, the data, the cells,
    the grouping and what the kind of job computes (``options``: its parameters as canonical JSON)."""

    KIND = "predictions"

    kind: str
    gene: str
    engine: str
    format: str
    covariates: str
    checkpoint_sha256: str
    data_sha256: str
    selection_sha256: str
    n_rows_total: int
    groupby: str
    options: str

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], source: str | Path) -> PredictionIdentity:
        """The identity stored in an output's attributes."""
        return cls._typed({k: _plain(v) for k, v in attrs.items()}, source)

    def first_difference(self, other: _Identity) -> tuple[str, str, str] | None:
        """As :meth:`_Identity.first_difference`, naming the option that differs rather than ``options``."""
        found = super().first_difference(other)
        if found is None or found[0] != "options":
            return found
        mine, theirs = json.loads(self.options), json.loads(other.options)  # type: ignore[attr-defined]
        key = next(k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k))
        return key, _shown(mine.get(key, "none")), _shown(theirs.get(key, "none"))


def canonical_options(options: dict[str, Any]) -> str:
    """A job's parameters as the canonical JSON its :class:`PredictionIdentity` records."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))


#: How a run-identity field is named in messages, where its bare name would not say what differs.
IDENTITY_LABELS = {"checkpoint_sha256": "checkpoint (sha256)", "data_sha256": "data file (sha256)",
                   "selection_sha256": "selected cells (sha256 of their names)", "n_rows_total": "number of cells",
                   "covariates": "covariates", "shard_count": "number of shards", "dtype": "value type (--dtype)",
                   "compression": "compression (--compression)"}


def _shown(value: Any) -> str:
    """A field's value as a message shows it (digests shortened)."""
    text = str(value) if value != "" else "none"
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def identity_sidecar(path: Path) -> Path:
    """Where a ``.npy`` output's identity is kept: ``.<name>.run.json`` beside it."""
    return Path(path).with_name(f".{Path(path).name}.run.json")


def output_attrs(identity: RunIdentity, shard_index: int, row_start: int, provenance: dict[str, Any]) -> dict:
    """Every attribute an output carries: encoding, identity, shard place and provenance."""
    unknown = sorted(set(provenance) - set(PROVENANCE))
    if unknown:
        raise ValueError(f"not provenance keys: {unknown}")
    return {"encoding-type": ENCODING_TYPE, "encoding-version": ENCODING_VERSION, **identity.attrs(),
            "shard_index": int(shard_index), "row_start": int(row_start), **provenance}


def _plain(value: Any) -> Any:
    """numpy scalars and bytes as plain Python values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    return value.decode() if isinstance(value, bytes) else value
