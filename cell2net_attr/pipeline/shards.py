"""Splitting work into N contiguous shards: ``--shard K/N`` or a SLURM job array.

Shard K of N of a list of n items is ``items[n*K//N : n*(K+1)//N]``: deterministic, contiguous,
sizes differ by at most one, and concatenating shards 0..N-1 gives the list back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, stop) of this shard in a list of ``n`` items."""
        return n * self.index // self.count, n * (self.index + 1) // self.count

    @property
    def suffix(self) -> str:
        """``-0000K-of-0000N``, the name tag of shard outputs."""
        return f"-{self.index:05d}-of-{self.count:05d}"

    def path(self, path: Path) -> Path:
        """``dir/stem.h5`` -> ``dir/stem-0000K-of-0000N.h5`` (``stem.tsv.gz`` -> ``stem-0000K-of-0000N.tsv.gz``)."""
        path = Path(path)
        suffix = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" and len(path.suffixes) > 1 else path.suffix
        return path.with_name(f"{path.name[: len(path.name) - len(suffix)]}{self.suffix}{suffix}")


def parse_shard(text: str) -> Shard:
    """``K/N`` with 0 <= K < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"expected K/N (e.g. 0/4), got '{text}'", param="shard")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise UserError(f"'{text}': need N >= 1 and 0 <= K < N", param="shard")
    return Shard(k, n)


def shard_from_slurm(env: Mapping[str, str]) -> Shard | None:
    """The shard of a SLURM array task (1-based and stepped arrays included), or None outside one."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", task))
        hi = int(env.get("SLURM_ARRAY_TASK_MAX", task))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", 1) or 1)
    except ValueError as exc:
        raise UserError("SLURM_ARRAY_TASK_* variables are not integers", "SLURM_ARRAY_TASK_ID") from exc
    count = int(env.get("SLURM_ARRAY_TASK_COUNT", (hi - lo) // step + 1))
    if step < 1 or (task - lo) % step or not lo <= task <= hi:
        raise UserError(f"task {task} is not in the array {lo}-{hi}:{step}", "SLURM_ARRAY_TASK_ID")
    return Shard((task - lo) // step, count)


def resolve_shard(flag: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard`` when given, else the SLURM array's, else None (no sharding)."""
    if flag is not None:
        return parse_shard(flag)
    return shard_from_slurm(os.environ if env is None else env)
