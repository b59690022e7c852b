"""``inspect``: what a checkpoint holds and whether a data file fits it."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .data import load_gene_data, numeric_obs_columns, open_store
from .errors import UserError


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
        cov = [c.strip() for c in covariates.split(",")] if covariates else []
        if ck.spec.n_covariates and not cov:
            cov = None
        try:
            if cov is None:
                raise UserError(f"the model needs {ck.spec.n_covariates} covariate(s): pass --covariates "
                                f"(candidates: {', '.join(report['covariate_candidates']) or 'none'})")
            view = load_gene_data(store, ck.gene, ck.spec, cov, rna_mod, atac_mod)
            report.update(layout=view.layout, peaks=view.peaks, tfs=view.tfs, covariates=view.covariates, match=True)
        except UserError as exc:
            report.update(match=False, problem=str(exc))
    finally:
        store.close()
    return report
