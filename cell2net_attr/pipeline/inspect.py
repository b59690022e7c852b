"""``inspect``: what a checkpoint holds and whether a data file fits it."""

from __future__ import annotations

from pathlib import Path

from ..data.covariates import numeric_obs_columns, parse_covariates, require_covariates
from ..data.gene_view import load_gene_data
from ..data.job_index import DataIndex
from ..data.store import open_store
from ..errors import UserError
from ..model.checkpoint import load_checkpoint


def describe(checkpoint: Path, data: Path | None = None, gene: str | None = None,
             covariates: str | None = None, rna_mod: str = "rna", atac_mod: str = "atac") -> dict:
    """A flat report; with data, ``match`` tells whether it fits the checkpoint (and why not)."""
    ck = load_checkpoint(checkpoint, gene)
    report: dict = {"checkpoint": str(checkpoint), "gene": ck.gene, **ck.spec.as_dict()}
    if data is None:
        return report
    store = open_store(data)
    try:
        report["data"] = str(data)
        report["cells"] = len(store.index("obs"))
        report["covariate_candidates"] = numeric_obs_columns(store)
        try:
            cov = parse_covariates(covariates)
            require_covariates(ck.spec.n_covariates, cov, store)
            view = load_gene_data(DataIndex(store), ck.gene, ck.spec, cov, rna_mod, atac_mod)
            report.update(layout=view.layout, peaks=view.peaks, tfs=view.tfs, covariates=view.covariates, match=True)
        except UserError as exc:
            report.update(match=False, problem=str(exc))
    finally:
        store.close()
    return report
