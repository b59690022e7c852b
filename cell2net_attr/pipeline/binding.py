"""A checkpoint bound to its data: load, validate against each other, and build its engine.

Both the notebook API (:mod:`cell2net_attr.api`) and the command-line pipeline build on this."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.covariates import parse_covariates, require_covariates
from ..data.gene_view import GeneData, load_gene_data
from ..data.job_index import DataIndex
from ..data.store import open_store
from ..engines.base import IGParams
from ..engines.registry import make_engine
from ..errors import UserError
from ..model.architecture import Cell2NetModule, from_state
from ..model.checkpoint import Checkpoint, infer_spec, load_checkpoint
from ..model.device import resolve_device
from .stream import EngineFeed, Sink


@dataclass
class AttributionModel:
    """A checkpoint's module bound to one gene's data, ready for attribution.

    Attributes mirror an upstream ``Cell2Net`` object: ``module``, ``device``, ``gene``,
    ``covariates``, ``tfs`` and ``mdata`` (the per-gene MuData, built on first access).
    """

    module: Cell2NetModule
    data: GeneData
    device: torch.device
    checkpoint: Checkpoint | None = None
    _mdata: Any = field(default=None, repr=False)
    owns_store: bool = True

    @property
    def gene(self) -> str:
        """The modelled gene."""
        return self.data.gene

    @property
    def covariates(self) -> list[str]:
        """Covariate obs columns, in the model's order."""
        return self.data.covariates

    def features(self, target: str) -> list[str]:
        """The names of what ``target`` attributes: the TFs, or the peaks (in the per-gene ``atac.var`` order)."""
        return self.data.peaks if target == "peaks" else self.data.tfs

    @property
    def tfs(self) -> list[str]:
        """TF names in the model's input order."""
        return self.data.tfs

    @property
    def mdata(self):
        """The per-gene MuData, as upstream's ``Cell2Net.mdata`` (read on first access)."""
        if self._mdata is None:
            self._mdata = _per_gene_mudata(self.data)
        return self._mdata

    def close(self) -> None:
        """Release the data file (unless the caller shares it across models)."""
        if self.owns_store:
            self.data.store.close()


def load_model(
    checkpoint: str | Path,
    data: str | Path | Any,
    gene: str | None = None,
    covariates: list[str] | str | None = None,
    device: str = "auto",
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    hdf5_locking: bool | None = None,
) -> AttributionModel:
    """Load a Cell2Net checkpoint and bind it to its data, checking that they match.

    Parameters
    ----------
    checkpoint
        ``GENE.pt`` written by ``Cell2Net.save``.
    data
        The per-gene ``GENE.h5mu`` saved beside it, the full multi-gene ``.h5mu``, or a MuData.
    gene
        Gene name; defaults to the checkpoint's file stem.
    covariates
        obs columns in the model's order (a list or ``"a,b"``); required when the model has any.
    device
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    ck = load_checkpoint(checkpoint, gene)
    dev = resolve_device(device)
    store = open_store(data, locking=hdf5_locking)
    owns_store = store is not data
    try:
        return bind(ck, DataIndex(store), parse_covariates(covariates), dev, rna_mod, atac_mod, owns_store)
    except BaseException:
        if owns_store:
            store.close()
        raise


def bind(ck: Checkpoint, index: DataIndex, covariates: list[str], device: torch.device, rna_mod: str = "rna",
         atac_mod: str = "atac", owns_store: bool = False) -> AttributionModel:
    """A loaded checkpoint bound to the data of a job's ``index`` (checked against each other)."""
    require_covariates(ck.spec.n_covariates, covariates, index.store)
    gene_data = load_gene_data(index, ck.gene, ck.spec, covariates, rna_mod, atac_mod)
    return AttributionModel(ck.build_module().to(device), gene_data, device, ck, owns_store=owns_store)


def as_model(model: Any, rna_mod: str = "rna", atac_mod: str = "atac") -> AttributionModel:
    """Accept our :class:`AttributionModel` or an upstream ``Cell2Net`` (without importing cell2net), whose
    MuData's modalities are ``rna_mod`` and ``atac_mod``."""
    if isinstance(model, AttributionModel):
        return model
    if not all(hasattr(model, a) for a in ("module", "mdata", "covariates")):
        raise UserError(f"expected a model from load_model() or a cell2net Cell2Net, got {type(model).__name__}")
    up = model.module
    keys = ("n_peaks", "peak_len", "n_tfs", "n_covariates")
    # upstream's module carries these as attributes; ours carries a spec
    summary = {k: getattr(getattr(up, "spec", up), k, None) for k in keys}
    state = {k: v.detach().cpu() for k, v in up.state_dict().items()}
    spec = infer_spec(state, summary, Path("<upstream module>"))
    module = from_state(spec, {k: v.clone() for k, v in state.items()})  # copies: upstream's module stays its own
    gene = getattr(model, "gene", None) or str(model.mdata.mod[rna_mod].var_names[0])
    cov = list(model.covariates or [])
    gene_data = load_gene_data(DataIndex(open_store(model.mdata)), gene, spec, cov, rna_mod, atac_mod)
    device = getattr(model, "device", None) or next(up.parameters()).device
    device = torch.device(device) if str(device) else torch.device("cpu")
    return AttributionModel(module.to(device), gene_data, device, None, model.mdata)


def engine_feed(m: AttributionModel, engine: str, params: IGParams, compute_block: int,
                sink: Sink | None = None) -> EngineFeed:
    """The engine ``engine`` built for ``m`` (shared inputs on its device), fed in blocks into ``sink``."""
    seq = torch.from_numpy(m.data.peak_seq).to(m.device)
    dist = torch.from_numpy(m.data.peak_dist).to(m.device)
    return EngineFeed(make_engine(engine, m.module, seq, dist, params), m.device, compute_block, sink)


def _per_gene_mudata(data: GeneData):
    """Build upstream's per-gene MuData view from the data file (for notebook users)."""
    import mudata as md

    store = data.store
    if hasattr(store, "mdata"):
        return store.mdata
    with warnings.catch_warnings():  # mudata's notices about its future defaults, once per gene otherwise
        warnings.simplefilter("ignore", FutureWarning)
        return _per_gene_view(md, data, md.read_h5mu(store.path))


def _per_gene_view(md, data: GeneData, full):
    """The per-gene view of the full MuData ``full`` (as upstream's ``Cell2Net.mdata``)."""
    if data.layout == "per-gene":
        return full
    rna = full.mod[data.rna_mod][:, data.gene].copy()
    rna.obsm["tf"] = full.mod[data.rna_mod][:, data.tfs].layers["counts"].copy()
    atac = full.mod[data.atac_mod][:, data.peaks].copy()
    if "peaks" in atac.uns:
        atac.uns["peaks"] = atac.uns["peaks"].loc[data.peaks].copy()
    view = md.MuData({data.rna_mod: rna, data.atac_mod: atac})
    view.obs = full.obs.copy()
    view.uns["tfs"] = list(data.tfs)
    p2g = full.uns["peak_to_gene"]
    view.uns["peak_to_gene"] = p2g[p2g["gene"].astype(str) == data.gene].reset_index(drop=True)
    return view
