"""The options of an attribution job, with their defaults: the one source the command line and the notebook
API derive theirs from. Importing it loads neither torch nor h5py (``--help`` shows the defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..engines.base import IGParams
from ..engines.registry import EngineInfo, check_engine
from ..errors import UserError
from ..io.storage import Storage

_IG = IGParams()  # the integration parameters' defaults are IGParams' own


@dataclass
class JobOptions:
    """What every job on a checkpoint and its data takes besides the input files (and their defaults)."""

    out: Path | None = None
    gene: str | None = None
    covariates: str | list[str] | None = None
    idx: str | None = None
    idx_type: str = "auto"
    where: str | None = None
    engine: str = "fast"
    batch_size: int | None = None  # None: the engine's own (see EngineInfo.default_batch)
    num_workers: int = 1
    device: str = "auto"
    threads: int | None = None  # None: the CPUs this process may use
    overwrite: bool = False
    resume: bool = False
    rna_mod: str = "rna"
    atac_mod: str = "atac"
    hdf5_locking: bool | None = None
    quiet: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Options from a mapping of their names; an unknown name is an error, never dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown run option(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of option ``name``."""
        return cls.__dataclass_fields__[name].default


@dataclass
class RunOptions(JobOptions):
    """Everything ``cell2net-attr run`` and ``run-many`` take besides the input files."""

    target: str = _IG.target
    n_steps: int = _IG.n_steps
    method: str = _IG.method
    multiply_by_inputs: bool = _IG.multiply_by_inputs
    module_mode: str = _IG.module_mode
    seed: int | None = _IG.seed
    delta: bool = _IG.return_delta
    chunk_rows: int | None = None
    dtype: str = Storage.dtype  # of the per-cell values (float32, float16)
    compression: str = Storage.compression  # of .h5/.h5ad per-cell files (none, gzip, lzf)
    # run-many only: the group table accumulated while computing (see pipeline.summary_job)
    summary: Path | None = None
    groupby: str | None = None
    top: int | None = None
    per_cell: bool = True

    def params(self) -> IGParams:
        """The attribution parameters (checked when made)."""
        return IGParams(self.n_steps, self.method, self.multiply_by_inputs, self.module_mode, self.seed,
                        self.delta, self.target)

    def check(self) -> tuple[IGParams, EngineInfo, int]:
        """Parameters, engine and batch size, checked before any file is read."""
        params = self.params()
        info = check_engine(self.engine, params)
        batch_size = self.batch_size if self.batch_size is not None else info.default_batch
        check_batching(batch_size, self.num_workers)
        self.check_products()
        return params, info, batch_size

    def storage(self) -> Storage:
        """How the per-cell values are stored (checked when made)."""
        return Storage(self.dtype, self.compression)

    def check_products(self) -> None:
        """The outputs' options make sense together (``--groupby``, ``--top`` and ``--no-per-cell`` need
        ``--summary``; ``--dtype`` and ``--compression`` need per-cell files)."""
        storage = self.storage()
        if self.summary is None:
            for name in ("groupby", "top"):
                if getattr(self, name) is not None:
                    raise UserError("needs --summary PATH (the table it makes)", param=name)
            if not self.per_cell:
                raise UserError("writes nothing without --summary PATH (the table to make instead)", param="per_cell")
        if self.top is not None and (isinstance(self.top, bool) or self.top < 1):
            raise UserError(f"must be a positive number, got {self.top}", param="top")
        if not self.per_cell and storage != Storage():
            name = "dtype" if storage.dtype != Storage.dtype else "compression"
            raise UserError("is for the per-cell files, which --no-per-cell does not write", param=name)


def check_batching(batch_size: int, num_workers: int) -> None:
    """``--batch-size`` >= 1 and ``--num-workers`` >= 0, as integers."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"must be an integer >= 1, got {batch_size!r}", param="batch_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise UserError(f"must be an integer >= 0, got {num_workers!r}", param="num_workers")
