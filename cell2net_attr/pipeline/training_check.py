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
from ..engines.fast import GeneHead
from ..engines.base import IGParams
from ..errors import DataMismatchWarning, UserError
from ..model.training_match import check_module
from .gene_job import GeneJob

#: Cells of the sample (evenly spaced over the selection): enough for a verdict, cheap for every gene.
SAMPLE_CELLS = 128


def sample_rows(n_cells: int, n: int = SAMPLE_CELLS) -> np.ndarray:
    """At most ``n`` of ``n_cells`` rows, evenly spaced over them."""
    return np.unique(np.linspace(0, n_cells - 1, min(n, n_cells)).round().astype(np.int64))


def check_training(jobs: list[GeneJob]) -> None:
    """Warn, per gene, when the sample does not fit its model's training statistics."""
    if not jobs:
        return
    rows = sample_rows(jobs[0].model.data.n_cells)
    for job, batch in zip(jobs, SharedRows([j.model.data for j in jobs]).read(rows, strict=False)):
        if isinstance(batch, UserError):  # the driver reports it with the gene's failure
            continue
        verdict = check_module(job.model.module, _preactivation(job, batch), batch.covariates, job.model.covariates)
        if verdict.warn:
            warnings.warn(f"{job.gene}: {verdict.message}", DataMismatchWarning, stacklevel=2)


def _preactivation(job: GeneJob, batch) -> torch.Tensor:
    """The gene's head pre-activations on ``batch``, through its engine's precomputed encoder when it has one."""
    engine = job.feed.engine
    if not isinstance(engine, GeneHead):  # the captum engine: the same encoder, built for the check
        m = job.model
        engine = GeneHead(m.module, torch.from_numpy(m.data.peak_seq).to(m.device),
                          torch.from_numpy(m.data.peak_dist).to(m.device), IGParams(method="exact"))
    device = job.model.device
    return engine.preactivation(*(torch.from_numpy(x).to(device) for x in (batch.peak_acc, batch.tf_exp,
                                                                             batch.covariates)))
