"""The notebook API: :func:`load_model`, :func:`tf_attr` and :func:`peak_attr`, mirroring cell2net's, and
:func:`set_threads` (torch's CPU threads: on a shared node, the cores this process may use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data.selection import resolve_idx
from .engines.base import IGParams
from .pipeline.binding import AttributionModel, as_model, load_model
from .pipeline.driver import compute
from .pipeline.gene_job import JobSpec, Selection, open_job
from .pipeline.lifecycle import Lifecycle
from .pipeline.options import RunOptions, check_batching
from .pipeline.progress import NullProgress, Progress
from .pipeline.stream import Blocks
from .pipeline.threads import set_threads

__all__ = ["AttributionModel", "load_model", "tf_attr", "peak_attr", "attribute", "saturation_mutagenesis",
           "score_variants", "set_threads"]

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


def saturation_mutagenesis(
    model: Any,
    peak: int | str,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    batch_size: int = 32,
    num_workers: int = 1,
    multiply_by_inputs: bool = True,
    logfc: bool = False,
    smoothing: bool = True,
    window_size: int = 3,
    return_seq: bool = False,
    *,
    idx: list[int] | list[str] | str | None = None,
    idx_type: str = _D.idx_type,
    engine: str = "fast",
    n_rule: str = "upstream",
    progress: Progress | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Which bases of one peak drive the gene: upstream's ``saturation_mutagenesis``, the (4, L) effects.

    Same signature and result as ``cell2net.interpretation.saturation_mutagenesis`` (float64 effects; with
    ``return_seq`` also the one-hot reference (4, L)): for each position and each base other than the stored
    one, the rate is predicted for every cell; the effect is ``mean(pred_ref) - mean(pred_alt)`` (``logfc``:
    ``log2`` of their ratio), smoothed over ``window_size`` positions, and with ``multiply_by_inputs`` kept
    in the stored base's row. ``peak`` is a position or a name; ``idx`` chooses cells (default all, as
    upstream); ``engine="reference"`` runs the plain forward as upstream does (slow); ``n_rule="mean"``
    divides by four at ``N`` bases instead of upstream's three (README: the N rule). ``rna_mod``/``atac_mod``
    name the modalities of an upstream model's MuData (a model from :func:`load_model` has its own).
    """
    from .pipeline.mutagenesis import MutagenesisJob, Reduction, check_predictor, resolve_peaks

    check_predictor(engine)
    check_batching(batch_size, num_workers)
    m = as_model(model, rna_mod, atac_mod)
    reduction = Reduction(multiply_by_inputs, logfc, smoothing, window_size, n_rule)
    reduction.check(m.data.peak_seq.shape[1])
    peaks = resolve_peaks([peak], m.data.peaks)
    rows = resolve_idx(idx, m.data.obs_names, idx_type)
    job = MutagenesisJob(m, peaks, Selection(rows, ""), reduction, engine, None,
                         read_rows=max(batch_size, 512 if engine == "fast" else batch_size))
    job.compute(num_workers, progress or NullProgress())
    result = job.result()
    effect = result.effect[0, 0]
    return (effect, result.onehot(0)) if return_seq else effect


def score_variants(
    model: Any,
    variants: str | Path,
    *,
    idx: list[int] | list[str] | str | None = None,
    idx_type: str = _D.idx_type,
    groupby: str | None = None,
    engine: str = "fast",
    batch_size: int = 32,
    num_workers: int = 1,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the SNVs of a VCF or variant table do to the model's gene: ``(table, skipped)``.

    ``table`` has one row per variant-gene-peak pair (and group): ``variant, gene, peak, offset, ref, alt,
    [groupby], n_cells, mean_ref, mean_alt, delta, log2fc`` (the mean rates over the cells with the reference
    and with the alternative base); ``skipped`` lists the records that could not be scored, with their reason
    (README: Variant effects).
    """
    from .data.obs_groups import read_obs_groups
    from .pipeline.mutagenesis import check_predictor
    from .pipeline.variants import VariantJob, job_spec, place_variants

    check_predictor(engine)
    check_batching(batch_size, num_workers)
    m = as_model(model)
    placed = place_variants(Path(variants), m.data.index, [m.gene], m.data.atac_mod)
    pairs = placed.pairs[placed.pairs["gene"] == m.gene].reset_index(drop=True)
    rows = resolve_idx(idx, m.data.obs_names, idx_type)
    groups = read_obs_groups(m.data.store, groupby) if groupby else None
    job = VariantJob(m, pairs, job_spec(rows, batch_size), groups, engine, None, "tsv", {}, None, None)
    compute([job], num_workers, progress or NullProgress())
    return job.table(), placed.skipped
