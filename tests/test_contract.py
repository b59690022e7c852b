"""The contract: reproduce upstream cell2net 0.13 ``tf_attr`` outputs in ``ref/`` numerically."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cell2net_attr
from cell2net_attr.cli import app

from .conftest import COVARIATES, manifest_cases

DATA_FILES = ("per-gene", "full")


def _data(upstream, gene: str, layout: str):
    return upstream / "models" / f"{gene}.h5mu" if layout == "per-gene" else upstream / "full.h5mu"


def _assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert got.dtype == np.float32
    scale = np.abs(ref).max()
    assert scale > 0
    assert np.abs(got - ref).max() <= 1e-5 * scale


def _idx_arg(idx) -> list[str]:
    return [] if idx is None else ["--idx", ",".join(str(i) for i in idx)]


@pytest.mark.parametrize("layout", DATA_FILES)
@pytest.mark.parametrize("gene,ref", manifest_cases(), ids=lambda v: v["file"] if isinstance(v, dict) else str(v))
def test_cli_reproduces_reference(upstream, tmp_path, gene, ref, layout):
    out = tmp_path / "attr.npy"
    args = ["run", str(upstream / "models" / f"{gene}.pt"), str(_data(upstream, gene, layout)),
            "--covariates", COVARIATES, "--n-steps", str(ref["n_steps"]), "--out", str(out), "--quiet",
            "--multiply-by-inputs" if ref["multiply_by_inputs"] else "--no-multiply-by-inputs", *_idx_arg(ref["idx"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    _assert_close(np.load(out), np.load(upstream / "ref" / ref["file"]))


@pytest.mark.parametrize("layout", DATA_FILES)
@pytest.mark.parametrize("gene,ref", manifest_cases(), ids=lambda v: v["file"] if isinstance(v, dict) else str(v))
def test_api_reproduces_reference(upstream, gene, ref, layout):
    model = cell2net_attr.load_model(upstream / "models" / f"{gene}.pt", _data(upstream, gene, layout),
                                     covariates=["cov0", "cov1"], device="cpu")
    try:
        got = cell2net_attr.tf_attr(model, idx=ref["idx"], batch_size=4, num_workers=0, n_steps=ref["n_steps"],
                                    multiply_by_inputs=ref["multiply_by_inputs"])
    finally:
        model.close()
    _assert_close(got, np.load(upstream / "ref" / ref["file"]))


@pytest.mark.parametrize("gene,ref", [c for c in manifest_cases() if isinstance(c, tuple)
                                      and (c[1]["idx"] is not None or c[1]["n_steps"] == 20)],
                         ids=lambda v: v["file"] if isinstance(v, dict) else str(v))
def test_captum_engine_reproduces_reference(upstream, gene, ref):
    """The reference engine, run exactly as upstream, on the entries that are quick to recompute."""
    model = cell2net_attr.load_model(upstream / "models" / f"{gene}.pt", upstream / "full.h5mu",
                                     covariates="cov0,cov1", device="cpu")
    got = cell2net_attr.tf_attr(model, idx=ref["idx"], n_steps=ref["n_steps"], num_workers=0,
                                multiply_by_inputs=ref["multiply_by_inputs"], engine="captum")
    _assert_close(got, np.load(upstream / "ref" / ref["file"]))


def test_tfs_and_architecture_match_manifest(upstream, manifest):
    for gene, m in manifest["models"].items():
        for layout in DATA_FILES:
            model = cell2net_attr.load_model(upstream / "models" / f"{gene}.pt", _data(upstream, gene, layout),
                                             covariates=["cov0", "cov1"], device="cpu")
            assert model.tfs == m["tfs"]
            assert model.gene == gene
            assert model.data.layout == layout
            spec = model.checkpoint.spec
            assert (spec.n_peaks, spec.n_tfs, spec.kernel_size, spec.n_dims) == (
                m["n_peaks"], m["n_tfs"], m["kernel_size"], m["n_dims"])
            assert ",".join(map(str, spec.n_filters)) == m["n_filters"]
            model.close()


class PeaksTF2GeneExpressionPoisson(torch.nn.Module):
    """The shape of upstream 0.13's module: its class name, its sizes as plain attributes (no ``spec``), its
    submodules under upstream's names; the forward is upstream's signature."""

    def __init__(self, weights_from: torch.nn.Module) -> None:
        super().__init__()
        spec = weights_from.spec
        self.n_peaks, self.peak_len, self.n_tfs, self.n_covariates = (spec.n_peaks, spec.peak_len, spec.n_tfs,
                                                                        spec.n_covariates)
        self.n_filters, self.n_channels, self.kernel_size = list(spec.n_filters), spec.n_channels, spec.kernel_size
        self.n_dims, self.n_attn_blocks, self.dropout_rate = spec.n_dims, spec.n_attn_blocks, 0.25
        for name in ("seq_encoder", "attn_blocks", "merge_seq_atac", "fc"):
            setattr(self, name, copy.deepcopy(getattr(weights_from, name)))

    def forward(self, peak_seq, peak_acc, peak_dist, tf_exp, covariates):  # pragma: no cover - never called
        raise AssertionError("cell2net-attr must use its own module")


class Cell2Net:
    """The shape of upstream's ``cell2net.Cell2Net`` model object (without importing cell2net)."""

    def __init__(self, module, mdata, gene: str, covariates: list[str], device: str) -> None:
        self.module, self.mdata, self.gene, self.covariates, self.device = module, mdata, gene, covariates, device


def test_upstream_style_object_is_accepted(upstream, manifest):
    """An upstream-shaped Cell2Net (its module's sizes read from attributes) reproduces the reference, and its
    module is left as it was."""
    import mudata as md

    from cell2net_attr.model.architecture import Cell2NetModule
    from cell2net_attr.model.checkpoint import load_checkpoint
    from cell2net_attr.pipeline.binding import as_model

    ck = load_checkpoint(upstream / "models" / "GENE0.pt")
    module = PeaksTF2GeneExpressionPoisson(ck.build_module())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    obj = Cell2Net(module, md.read_h5mu(upstream / "models" / "GENE0.h5mu"), "GENE0", ["cov0", "cov1"], "cpu")
    ours = as_model(obj)
    assert isinstance(ours.module, Cell2NetModule) and ours.module.spec == ck.spec
    ref = manifest["models"]["GENE0"]["refs"][2]  # obs names, 100 steps
    got = cell2net_attr.tf_attr(obj, idx=ref["idx"], n_steps=ref["n_steps"])
    _assert_close(got, np.load(upstream / "ref" / ref["file"]))
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_h5_output_layout(upstream, tmp_path):
    out = tmp_path / "g.h5"
    result = CliRunner().invoke(app, ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                                      "--covariates", COVARIATES, "--idx", "cell_00009_C,3", "--idx-type", "name",
                                      "--out", str(out), "--delta", "-q"])
    assert result.exit_code == 2  # "3" is not an obs name
    result = CliRunner().invoke(app, ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                                      "--covariates", COVARIATES, "--idx", "9,3", "--out", str(out), "--delta", "-q"])
    assert result.exit_code == 0, result.output
    import h5py

    from cell2net_attr.data.store import file_sha256

    with h5py.File(out) as f:
        assert f["attributions"].shape == (2, 7) and f["attributions"].dtype == np.float32
        assert [s.decode() for s in f["obs_names"][:]] == ["cell_00009_C", "cell_00003_T"]
        assert [s.decode() for s in f["tf_names"][:]] == ["TF0", "TF2", "TF3", "TF4", "TF6", "TF7", "TF8"]
        attrs = dict(f.attrs)
        assert attrs["gene"] == "GENE0" and attrs["n_steps"] == 100 and attrs["method"] == "gausslegendre"
        assert bool(attrs["multiply_by_inputs"]) and attrs["baseline"] == "zero" and attrs["engine"] == "fast"
        assert attrs["device"] == "cpu" and attrs["tool_version"] == cell2net_attr.__version__
        assert attrs["checkpoint_sha256"] == file_sha256(upstream / "models" / "GENE0.pt")
        assert attrs["data_sha256"] == file_sha256(upstream / "full.h5mu")
        delta = f["convergence_delta"][:]
        assert delta.shape == (2,) and np.all(np.abs(delta) < 0.05)  # gauss-legendre, 100 steps


def test_anndata_output(upstream, tmp_path):
    """run --out X.h5ad: cells x TFs with the selected cells' obs, TF var names, provenance in uns."""
    import anndata as ad

    from .conftest import sha256_tree

    before = sha256_tree(upstream)
    out = tmp_path / "g.h5ad"
    ref = next(r for r in json.loads((upstream / "ref" / "manifest.json").read_text())["models"]["GENE0"]["refs"]
               if r["file"] == "GENE0.names.s100.mbi.npy")
    r = CliRunner().invoke(app, ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                                 "--covariates", COVARIATES, "--idx", ",".join(ref["idx"]), "--out", str(out),
                                 "--delta", "-q"])
    assert r.exit_code == 0, r.output
    adata = ad.read_h5ad(out)
    _assert_close(np.asarray(adata.X), np.load(upstream / "ref" / ref["file"]))
    assert list(adata.obs_names) == ref["idx"]
    assert list(adata.var_names) == ["TF0", "TF2", "TF3", "TF4", "TF6", "TF7", "TF8"]
    import mudata as md

    obs = md.read_h5mu(upstream / "full.h5mu").obs.loc[ref["idx"], ["cov0", "cov1", "celltype"]]
    assert np.array_equal(adata.obs[["cov0", "cov1"]].to_numpy(), obs[["cov0", "cov1"]].to_numpy())
    assert list(adata.obs["celltype"].astype(str)) == list(obs["celltype"].astype(str))
    assert np.all(np.abs(adata.obs["convergence_delta"]) < 0.05)
    prov = adata.uns["cell2net_attr"]
    assert prov["gene"] == "GENE0" and prov["n_steps"] == 100 and prov["engine"] == "fast"
    assert len(prov["checkpoint_sha256"]) == 64 and len(prov["data_sha256"]) == 64
    assert sha256_tree(upstream) == before  # nothing written into the user's .h5mu
