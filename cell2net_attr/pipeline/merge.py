"""``merge``: join the HDF5 shards of one run, in order, after checking they belong together."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from ..io.writers import check_output, open_writer

#: Attributes every shard of one run must share (device and tool version may differ between nodes).
CONSISTENT = ("gene", "n_steps", "method", "multiply_by_inputs", "baseline", "engine", "module_mode", "seed",
              "covariates", "checkpoint_sha256", "data_sha256", "selection_sha256", "n_rows_total",
              "shard_count")
SHARD_ONLY = ("shard_index", "shard_count", "row_start")


def _read_shard(path: Path) -> dict:
    if not path.is_file():
        raise UserError("shard not found", path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs}
            missing = [k for k in (*CONSISTENT, "shard_index", "row_start") if k not in attrs]
            if missing or "attributions" not in f:
                raise UserError(f"not a cell2net-attr shard (lacks {missing[:3] or ['attributions']})", path)
            # the matrices are only measured here; _copy_rows streams them into the output
            return {"path": path, "attrs": attrs, "rows": f["attributions"].shape[0],
                    "obs": [s.decode() if isinstance(s, bytes) else str(s) for s in f["obs_names"][:]],
                    "tfs": [s.decode() if isinstance(s, bytes) else str(s) for s in f["tf_names"][:]],
                    "delta": "convergence_delta" in f}
    except OSError as exc:
        raise UserError(f"not a readable HDF5 shard ({str(exc).splitlines()[0][:120]})", path) from exc


def _same(a, b) -> bool:
    return bool(np.all(np.asarray(a) == np.asarray(b)))


def check_shards(shards: list[dict]) -> list[dict]:
    """Shards in order; errors name the missing, duplicated or foreign shard."""
    first = shards[0]
    for s in shards[1:]:
        for key in CONSISTENT:
            if not _same(s["attrs"][key], first["attrs"][key]):
                raise UserError(f"foreign shard: its {key} ({s['attrs'][key]}) differs from {first['path'].name}'s "
                                f"({first['attrs'][key]})", s["path"])
        if s["tfs"] != first["tfs"]:
            raise UserError(f"foreign shard: its TFs differ from {first['path'].name}'s", s["path"])
    count = int(first["attrs"]["shard_count"])
    by_index: dict[int, dict] = {}
    for s in shards:
        k = int(s["attrs"]["shard_index"])
        if k in by_index:
            raise UserError(f"shard {k}/{count} given twice (also {by_index[k]['path']})", s["path"])
        by_index[k] = s
    missing = [k for k in range(count) if k not in by_index]
    if missing:
        raise UserError(f"missing shard(s) {', '.join(f'{k}/{count}' for k in missing[:10])} of {count}",
                        first["path"])
    ordered = [by_index[k] for k in range(count)]
    total, start = int(first["attrs"]["n_rows_total"]), 0
    for s in ordered:
        if int(s["attrs"]["row_start"]) != start or s["rows"] != len(s["obs"]):
            raise UserError(f"incomplete or inconsistent shard: rows start at {s['attrs']['row_start']}, "
                            f"expected {start}", s["path"])
        start += s["rows"]
    if start != total:
        raise UserError(f"shards hold {start} rows, the run selected {total}", first["path"])
    return ordered


def merge(paths: list[Path], out: Path, overwrite: bool = False) -> int:
    """Check and join shards into ``out`` (atomically); returns the number of rows."""
    if not paths:
        raise UserError("no shards given", "SHARDS")
    check_output(out, overwrite, list(paths))
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError("merged output must be HDF5 (.h5/.hdf5)", out)
    ordered = check_shards([_read_shard(Path(p)) for p in paths])
    meta = {k: v for k, v in ordered[0]["attrs"].items() if k not in SHARD_ONLY}
    meta.update(shard_index=0, shard_count=1, row_start=0, merged_from=len(ordered))
    with_delta = all(s["delta"] for s in ordered)
    obs = [name for s in ordered for name in s["obs"]]
    writer = open_writer(out, obs, ordered[0]["tfs"], meta, with_delta)
    try:
        for s in ordered:
            _copy_rows(s, writer, with_delta)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return len(obs)


def _copy_rows(shard: dict, writer, with_delta: bool, block: int = 65536) -> None:
    """Copy a shard's rows into the merged output block by block (bounded memory)."""
    start = int(shard["attrs"]["row_start"])
    with h5py.File(shard["path"], "r") as f:
        for a in range(0, shard["rows"], block):
            delta = f["convergence_delta"][a : a + block] if with_delta else None
            writer.write(start + a, f["attributions"][a : a + block], delta)
