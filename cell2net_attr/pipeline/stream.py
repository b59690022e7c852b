"""Streaming selected cells through an engine, batch by batch, into a sink."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..data.gene_view import Batch, GeneData
from ..engines.base import Engine

Sink = Callable[[int, np.ndarray, "np.ndarray | None"], None]


def _batches(data: GeneData, rows: np.ndarray, batch_size: int, num_workers: int) -> Iterator[tuple[int, Batch]]:
    """Read batches in order; with workers, reading runs ahead of compute in threads."""
    starts = range(0, len(rows), batch_size)
    if num_workers <= 0:
        for s in starts:
            yield s, data.batch(rows[s : s + batch_size])
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending = []
        it = iter(starts)
        for s in it:
            pending.append((s, pool.submit(data.batch, rows[s : s + batch_size])))
            if len(pending) > num_workers:
                break
        while pending:
            s, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(data.batch, rows[nxt : nxt + batch_size])))
            yield s, fut.result()


def run_engine(
    engine: Engine,
    data: GeneData,
    rows: np.ndarray,
    device: torch.device,
    sink: Sink,
    batch_size: int,
    num_workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Attribute ``rows`` of ``data`` and hand each block to ``sink(start, attr, delta)``."""
    for start, batch in _batches(data, rows, batch_size, num_workers):
        tensors = [torch.from_numpy(a).to(device, non_blocking=True)
                   for a in (batch.peak_acc, batch.tf_exp, batch.covariates)]
        attr, delta = engine.attribute(*tensors)
        sink(start, attr.float().cpu().numpy(), None if delta is None else delta.float().cpu().numpy())
        if on_batch is not None:
            on_batch(len(batch.tf_exp))
