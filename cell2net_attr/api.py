"""The notebook API: :func:`load_model`, :func:`tf_attr` and :func:`peak_attr`, mirroring cell2net's, and
:func:`set_threads` (torch's CPU threads: on a shared node, the cores this process may use)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.selection import resolve_idx
from .engines.base import IGParams
from .pipeline.binding import AttributionModel, as_model, load_model
from .pipeline.driver import compute
from .pipeline.gene_job import JobSpec, Selection, open_job
from .pipeline.lifecycle import Lifecycle
from .pipeline.options import RunOptions
from .pipeline.progress import NullProgress, Progress
from .pipeline.stream import Blocks
from .pipeline.threads import set_threads

__all__ = ["AttributionModel", "load_model", "tf_attr", "peak_attr", "attribute", "set_threads"]

#: Upstream's ``batch_size`` and ``num_workers`` defaults (its signature); everything else is RunOptions'.
UPSTREAM_BATCH_SIZE, UPSTREAM_NUM_WORKERS = 4, 1
_D = RunOptions()


def _upstream(target: str, doc: str):
    """An attribution function with upstream's signature (``tf_attr``/``peak_attr``) for ``target``."""

    def attr(
        model: Any,
        idx: list[int] | list[str] | str | None = None,
        batch_size: int = UPSTREAM_BATCH_SIZE,
        num_workers: int = UPSTREAM_NUM_WORKERS,
        n_steps: int = _D.n_steps,
        multiply_by_inputs: bool = _D.multiply_by_inputs,
        *,
        method: str = _D.method,
        engine: str = _D.engine,
        module_mode: str = _D.module_mode,
        seed: int | None = _D.seed,
        idx_type: str = _D.idx_type,
        progress: Progress | None = None,
    ) -> np.ndarray:
        params = IGParams(n_steps, method, multiply_by_inputs, module_mode, seed, target=target)
        return attribute(model, idx, batch_size, num_workers, params, engine, idx_type, progress)[0]

    attr.__name__ = attr.__qualname__ = f"{target[:-1]}_attr"
    attr.__doc__ = doc
    return attr


tf_attr = _upstream("tfs", """Integrated Gradients of the prediction with respect to TF expression, cells x TFs.

    Same signature and result as ``cell2net.interpretation.tf_attr`` (baseline zero for TF expression,
    other inputs held fixed); the keyword-only arguments choose the quadrature (or ``method="exact"``),
    the engine, and the module mode.
    """)

peak_attr = _upstream("peaks", """Integrated Gradients of the prediction with respect to peak accessibility, cells x peaks.

    Same signature and result as ``cell2net.interpretation.peak_attr`` (baseline zero accessibility;
    sequence, distance, TF expression and covariates fixed); peaks in the per-gene ``atac.var`` order.
    """)


def attribute(
    model: Any,
    idx,
    batch_size: int,
    num_workers: int,
    params: IGParams,
    engine: str = _D.engine,
    idx_type: str = _D.idx_type,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Attributions (and deltas when ``params.return_delta``) held in memory."""
    m = as_model(model)
    opts = RunOptions(engine=engine, batch_size=batch_size, num_workers=num_workers, n_steps=params.n_steps,
                      method=params.method, multiply_by_inputs=params.multiply_by_inputs,
                      module_mode=params.module_mode, seed=params.seed, delta=params.return_delta,
                      target=params.target)
    params, info, batch_size = opts.check()
    rows = resolve_idx(idx, m.data.obs_names, idx_type)
    selection = Selection(rows, "")  # kept in memory: no identity to record
    spec = JobSpec(params, engine, Blocks.choose(info, batch_size), selection, 0, len(rows))
    with Lifecycle() as life:
        job = life.add(open_job(m, spec))
        compute([job], num_workers, progress or NullProgress())
        life.finish(job)
    return job.sink.attr, job.sink.delta
