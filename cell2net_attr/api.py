"""The notebook API: :func:`load_model`, :func:`tf_attr` and :func:`peak_attr`, mirroring cell2net's."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.selection import resolve_idx
from .engines.base import IGParams
from .pipeline.binding import AttributionModel, as_model, load_model, run_cells
from .pipeline.progress import NullProgress, Progress

__all__ = ["AttributionModel", "load_model", "tf_attr", "peak_attr", "attribute"]


def _upstream(target: str, doc: str):
    """An attribution function with upstream's signature (``tf_attr``/``peak_attr``) for ``target``."""

    def attr(
        model: Any,
        idx: list[int] | list[str] | str | None = None,
        batch_size: int = 4,
        num_workers: int = 1,
        n_steps: int = 100,
        multiply_by_inputs: bool = True,
        *,
        method: str = "gausslegendre",
        engine: str = "fast",
        module_mode: str = "eval",
        seed: int | None = None,
        idx_type: str = "auto",
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
    engine: str = "fast",
    idx_type: str = "auto",
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Attributions (and deltas when ``params.return_delta``) held in memory."""
    m = as_model(model)
    rows = resolve_idx(idx, m.data.obs_names, idx_type)
    out = np.empty((len(rows), len(m.features(params.target))), dtype=np.float32)
    delta = np.empty(len(rows), dtype=np.float32) if params.return_delta else None

    def sink(start: int, a: np.ndarray, d: np.ndarray | None) -> None:
        out[start : start + len(a)] = a
        if delta is not None and d is not None:
            delta[start : start + len(d)] = d

    run_cells(m, rows, params, engine, batch_size, num_workers, sink, progress or NullProgress())
    return out, delta
