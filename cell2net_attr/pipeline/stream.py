"""Streaming cells through engines: rows in blocks, each block read once, every gene's engine fed from it.

Reading and computing are sized separately. ``batch_size`` keeps upstream's meaning for the reference
engine (cells per batch handed to captum); an engine whose results do not depend on batching (the fast
one) reads and computes in blocks of its own size, at least ``batch_size``, so a notebook user who
copies upstream's ``batch_size=4`` gets the fast path too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..data.rows import Batch
from ..engines.base import Engine
from ..engines.registry import EngineInfo

Sink = Callable[[int, np.ndarray, "np.ndarray | None"], None]
T = TypeVar("T")

#: Rows read at once for a job of several genes with a batching-free engine (bounded memory: a block of
#: a wide sparse matrix, restricted to the genes' columns).
JOB_READ_ROWS = 2048


@dataclass(frozen=True)
class Blocks:
    """How many cells are read at once (``read``) and handed to the engine at once (``compute``)."""

    read: int
    compute: int

    @classmethod
    def choose(cls, info: EngineInfo, batch_size: int, n_genes: int = 1) -> Blocks:
        """Upstream's batches for an engine that needs them, else the engine's own blocks."""
        if info.compute_block is None:
            return cls(batch_size, batch_size)
        compute = max(batch_size, info.compute_block)
        return cls(max(compute, JOB_READ_ROWS if n_genes > 1 else compute), compute)


class EngineFeed:
    """One gene's engine, fed row blocks and handing its results to ``sink(start, attr, delta)``."""

    def __init__(self, engine: Engine, device: torch.device, compute_block: int, sink: Sink | None = None) -> None:
        self.engine, self.device, self.compute_block, self.sink = engine, device, compute_block, sink

    def feed(self, start: int, batch: Batch) -> None:
        """Attribute the cells of ``batch``, the first of which is output row ``start``."""
        n = len(batch)
        for a in range(0, n, self.compute_block):
            part = slice(a, min(n, a + self.compute_block))
            tensors = [torch.from_numpy(x[part]).to(self.device, non_blocking=True)
                       for x in (batch.peak_acc, batch.tf_exp, batch.covariates)]
            attr, delta = self.engine.attribute(*tensors)
            self.sink(start + a, attr.float().cpu().numpy(),
                      None if delta is None else delta.float().cpu().numpy())


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc). Every block allocates and frees large arrays; glibc
    keeps what it freed and, fragmented, the resident memory would grow with the number of cells read."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


def read_ahead(read: Callable[[np.ndarray], T], rows: np.ndarray, size: int,
               num_workers: int) -> Iterator[tuple[int, T]]:
    """``(start, read(rows[start:start+size]))`` in order; with workers, reading runs ahead in threads."""
    starts = range(0, len(rows), size)
    if num_workers <= 0:
        for s in starts:
            yield s, read(rows[s : s + size])
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending = []
        it = iter(starts)
        for s in it:
            pending.append((s, pool.submit(read, rows[s : s + size])))
            if len(pending) > num_workers:
                break
        while pending:
            s, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, rows[nxt : nxt + size])))
            yield s, fut.result()


def stream(feeds: Sequence[Callable[[int, Batch], None]], read: Callable[[np.ndarray], list], rows: np.ndarray,
           read_rows: int, num_workers: int = 0, on_block: Callable[[int], None] | None = None) -> None:
    """Read ``rows`` block by block, once, and hand each gene its inputs (``feeds[g](start, batch)``)."""
    for start, batches in read_ahead(read, rows, read_rows, num_workers):
        for feed, batch in zip(feeds, batches):
            feed(start, batch)
        del batches
        release_free_memory()
        if on_block is not None:
            on_block(min(read_rows, len(rows) - start))
