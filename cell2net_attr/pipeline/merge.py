"""``merge``: join the shards of one run (``.h5``/``.hdf5`` or ``.h5ad``), in order, after checking they belong
together: the same run identity (:class:`~cell2net_attr.io.schema.RunIdentity`), every shard once, every row."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..io.formats import check_output, format_of, iter_rows, read_header, read_obs
from ..io.layouts import Header
from ..io.schema import NPY_CANNOT_MERGE, PROVENANCE, RunIdentity, output_attrs
from ..io.storage import Storage

BLOCK = 65536  # rows copied at a time


@dataclass
class ShardFile:
    """One shard: where it is, what it stores, where its rows go."""

    header: Header
    identity: RunIdentity
    index: int
    row_start: int

    @property
    def path(self) -> Path:
        """Where it is."""
        return self.header.path

    @property
    def obs(self) -> list[str]:
        """Its cells' names."""
        return self.header.obs

    @property
    def rows(self) -> int:
        """Number of cells it holds."""
        return len(self.header.obs)


def read_shard(path: Path) -> ShardFile:
    """The header of one shard (its matrix is only measured; :func:`_copy_rows` streams it)."""
    if not path.is_file():
        raise UserError("shard not found", path)
    if not format_of(path).has_names:
        raise UserError(NPY_CANNOT_MERGE, path)
    header = read_header(path)
    attrs = header.attrs
    if "shard_index" not in attrs or "row_start" not in attrs:
        raise UserError("not a cell2net-attr shard (lacks shard_index)", path)
    if header.n_rows != len(header.obs):
        raise UserError(f"incomplete shard: {header.n_rows} rows for {len(header.obs)} cell names", path)
    identity = RunIdentity.from_attrs(attrs, path, header.has_delta, header.fmt)
    return ShardFile(header, identity, int(attrs["shard_index"]), int(attrs["row_start"]))


def check_shards(shards: list[ShardFile]) -> list[ShardFile]:
    """Shards in order; errors name the missing, duplicated or foreign shard."""
    first = shards[0]
    for s in shards[1:]:
        differ = s.identity.differences(first.identity)
        if differ:
            key = differ[0]
            raise UserError(f"foreign shard: its {key} ({getattr(s.identity, key)}) differs from "
                            f"{first.path.name}'s ({getattr(first.identity, key)})", s.path)
        if s.header.features != first.header.features:
            raise UserError(f"foreign shard: its features differ from {first.path.name}'s", s.path)
    count = first.identity.shard_count
    by_index: dict[int, ShardFile] = {}
    for s in shards:
        if s.index in by_index:
            raise UserError(f"shard {s.index}/{count} given twice (also {by_index[s.index].path})", s.path)
        by_index[s.index] = s
    missing = [k for k in range(count) if k not in by_index]
    if missing:
        raise UserError(f"missing shard(s) {', '.join(f'{k}/{count}' for k in missing[:10])} of {count}", first.path)
    ordered = [by_index[k] for k in range(count)]
    start = 0
    for s in ordered:
        if s.row_start != start:
            raise UserError(f"incomplete or inconsistent shard: rows start at {s.row_start}, expected {start}", s.path)
        start += s.rows
    if start != first.identity.n_rows_total:
        raise UserError(f"shards hold {start} rows, the run selected {first.identity.n_rows_total}", first.path)
    return ordered


def merge(paths: list[Path], out: Path, overwrite: bool = False) -> int:
    """Check and join shards into ``out`` (``.h5``/``.hdf5``/``.h5ad``, atomically); returns the number of rows."""
    if not paths:
        raise UserError("no shards given", "SHARDS")
    fmt = check_output(out, overwrite, list(paths))
    if not fmt.has_names:
        raise UserError("merged output must be .h5, .hdf5 or .h5ad (a .npy has no cell names)", out)
    ordered = check_shards([read_shard(Path(p)) for p in paths])
    first = ordered[0]
    identity = first.identity
    storage = Storage(identity.dtype, identity.compression)  # the merged file stores what the shards did
    provenance = {k: v for k, v in first.header.attrs.items() if k in PROVENANCE}
    meta = output_attrs(replace(identity, format=fmt.name), 0, 0, {**provenance, "merged_from": len(ordered)})
    obs = [name for s in ordered for name in s.obs]
    writer = fmt.open_writer(out, obs, first.header.features, meta, identity.delta, None,
                             lambda: _obs_table(ordered, obs), storage)
    try:
        for s in ordered:
            for start, attr, delta in iter_rows(s.header, BLOCK):
                writer.write(s.row_start + start, attr, delta if identity.delta else None)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return len(obs)


def _obs_table(shards: list[ShardFile], obs: list[str]) -> pd.DataFrame:
    """The cells' obs for an AnnData output: the shards' own (``.h5ad``) or their names alone."""
    if all(s.header.fmt == "h5ad" for s in shards):
        return pd.concat([read_obs(s.header) for s in shards])
    return pd.DataFrame(index=pd.Index(obs))
