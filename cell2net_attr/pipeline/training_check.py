"""Before computing: does each gene's data, and its covariate order, look like what its model was trained on?

A sample of the data file's cells, evenly spaced over all of them (not over the selection: a chosen cell
type, a shard or the first rows of a file sorted by cell type are unlike the whole by design), is read once
for a group of genes; each gene's head pre-activations on it are compared with its BatchNorm's training
statistics (:mod:`cell2net_attr.model.training_match`). A mismatch is a
:class:`~cell2net_attr.errors.DataMismatchWarning` naming the gene, never an error: the covariate names are
not in the checkpoint, so this is evidence, not proof. Every shard of a run checks the same sample.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..data.rows import SharedRows
from ..engines.base import IGParams
from ..engines.fast import GeneHead
from ..errors import DataMismatchWarning, UserError
from ..model.training_match import check_module
from .binding import AttributionModel

#: Cells of the sample (evenly spaced over the selection): enough for a verdict, cheap for every gene.
SAMPLE_CELLS = 128


def sample_rows(n_cells: int, n: int = SAMPLE_CELLS) -> np.ndarray:
    """At most ``n`` of ``n_cells`` rows, evenly spaced over them."""
    return np.unique(np.linspace(0, n_cells - 1, min(n, n_cells)).round().astype(np.int64))


def check_training(models: list[AttributionModel], engines: list | None = None) -> None:
    """Warn, per gene, when the sample does not fit its model's training statistics. ``engines`` (one per model)
    are the jobs' own, whose precomputed encoder gives the pre-activations when they have one."""
    if not models:
        return
    rows = sample_rows(models[0].data.n_cells)
    engines = engines or [None] * len(models)
    for model, engine, batch in zip(models, engines, SharedRows([m.data for m in models]).read(rows, strict=False)):
        if isinstance(batch, UserError):  # the job reports it with the gene's failure
            continue
        verdict = check_module(model.module, _preactivation(model, engine, batch), batch.covariates,
                               model.covariates)
        if verdict.warn:
            warnings.warn(f"{model.gene}: {verdict.message}", DataMismatchWarning, stacklevel=2)


def _preactivation(model: AttributionModel, engine, batch) -> torch.Tensor:
    """The gene's head pre-activations on ``batch``, through the engine's precomputed encoder when it has one."""
    if not isinstance(engine, GeneHead):  # the captum or a rate engine: the same encoder, built for the check
        engine = GeneHead(model.module, torch.from_numpy(model.data.peak_seq).to(model.device),
                          torch.from_numpy(model.data.peak_dist).to(model.device), IGParams(method="exact"))
    return engine.preactivation(*(torch.from_numpy(x).to(model.device) for x in (batch.peak_acc, batch.tf_exp,
                                                                                   batch.covariates)))
