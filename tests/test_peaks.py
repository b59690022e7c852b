"""Peak-accessibility attributions: upstream ``peak_attr`` outputs in ``ref/peaks`` reproduced numerically,
through the CLI and the API, from the per-gene and the full ``.h5mu``; fast engine equals captum."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cell2net_attr
from cell2net_attr.cli import app
from cell2net_attr.engines.base import QUADRATURE_METHODS, IGParams
from cell2net_attr.engines.registry import make_engine
from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import random_module

from .conftest import COVARIATES, UPSTREAM, interrupt, run_cmd


def _cases():
    path = UPSTREAM / "ref" / "peaks" / "manifest.json"
    if not path.is_file():
        return [pytest.param("missing", {}, marks=pytest.mark.usefixtures("upstream"), id="fixtures-missing")]
    man = json.loads(path.read_text())
    return [pytest.param(g, r, id=r["file"]) for g, m in man["models"].items() for r in m["refs"]]


def _data(upstream, gene, layout):
    return upstream / "models" / f"{gene}.h5mu" if layout == "per-gene" else upstream / "full.h5mu"


def _close(got, ref):
    assert got.shape == tuple(ref.shape) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("layout", ["per-gene", "full"])
@pytest.mark.parametrize("gene,ref", _cases())
def test_api_reproduces_peak_reference(upstream, gene, ref, layout):
    model = cell2net_attr.load_model(upstream / "models" / f"{gene}.pt", _data(upstream, gene, layout),
                                     covariates=["cov0", "cov1"], device="cpu")
    try:
        got = cell2net_attr.peak_attr(model, idx=ref["idx"], n_steps=ref["n_steps"],
                                      multiply_by_inputs=ref["multiply_by_inputs"])
        peaks = json.loads((upstream / "ref" / "peaks" / "manifest.json").read_text())["models"][gene]["peaks"]
        assert model.data.peaks == peaks
    finally:
        model.close()
    _close(got, np.load(upstream / "ref" / "peaks" / ref["file"]))


@pytest.mark.parametrize("layout", ["per-gene", "full"])
@pytest.mark.parametrize("gene,ref", _cases())
def test_cli_reproduces_peak_reference(upstream, tmp_path, gene, ref, layout):
    out = tmp_path / "p.h5"
    args = ["run", str(upstream / "models" / f"{gene}.pt"), str(_data(upstream, gene, layout)), "--target", "peaks",
            "--covariates", COVARIATES, "--n-steps", str(ref["n_steps"]), "-o", str(out), "-q", "--delta",
            "--multiply-by-inputs" if ref["multiply_by_inputs"] else "--no-multiply-by-inputs"]
    if ref["idx"] is not None:
        args += ["--idx", ",".join(map(str, ref["idx"]))]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        _close(f["attributions"][:], np.load(upstream / "ref" / "peaks" / ref["file"]))
        assert f.attrs["target"] == "peaks" and "peak_names" in f and "tf_names" not in f
        if ref["multiply_by_inputs"]:  # completeness: the deltas are small against the attributions
            assert np.abs(f["convergence_delta"][:]).max() < 0.05 * np.abs(f["attributions"][:]).sum(1).max() + 1e-3


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", QUADRATURE_METHODS)
@pytest.mark.parametrize("mbi", [True, False])
def test_fast_peaks_equals_captum_on_random_models(seed, method, mbi):
    g = torch.Generator().manual_seed(seed)
    spec = ModelSpec(n_peaks=int(torch.randint(1, 9, (1,), generator=g)), peak_len=32,
                     n_tfs=int(torch.randint(1, 7, (1,), generator=g)), n_covariates=seed, n_filters=(8, 8),
                     n_channels=4, kernel_size=3 + seed, n_dims=8, n_attn_blocks=1 + seed)
    module = random_module(spec, seed)
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (spec.n_peaks, 32), generator=g), 4).float()
    dist = torch.rand(spec.n_peaks, generator=g)
    acc = torch.poisson(torch.full((5, spec.n_peaks), 1.5), generator=g)
    tf = torch.poisson(torch.full((5, spec.n_tfs), 2.0), generator=g)
    cov = torch.randn(5, spec.n_covariates, generator=g)
    params = IGParams(n_steps=12, method=method, multiply_by_inputs=mbi, return_delta=True, target="peaks")
    fast, d_fast = make_engine("fast", module, seq, dist, params).attribute(acc, tf, cov)
    ref, d_ref = make_engine("captum", module, seq, dist, params).attribute(acc, tf, cov)
    assert fast.shape == (5, spec.n_peaks)
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-7
    assert (d_fast - d_ref).abs().max() <= 1e-4 * (ref.abs().max() + 1)


def _open_fraction_inputs(spec: ModelSpec, g: torch.Generator):
    """Cells with every peak closed, one peak open (5% of 20), half open, all open, and Poisson counts."""
    p, n = spec.n_peaks, 6
    acc = torch.poisson(torch.full((n, p), 1.5), generator=g)
    acc[0] = 0.0
    acc[1] = 0.0
    acc[1, int(torch.randint(0, p, (1,), generator=g))] = 3.0
    acc[2, torch.randperm(p, generator=g)[: p // 2]] = 0.0
    acc[3] = 1.0 + torch.poisson(torch.full((p,), 4.0), generator=g)
    acc[4] = torch.where(torch.rand(p, generator=g) < 0.5, 0.0, 1.0 + 10 * torch.rand(p, generator=g))
    tf = torch.poisson(torch.full((n, spec.n_tfs), 2.0), generator=g)
    cov = torch.randn(n, spec.n_covariates, generator=g)
    return acc, tf, cov


@pytest.mark.parametrize("blocks", [0, 1, 3])
@pytest.mark.parametrize("path", ["exp2", "sdpa"])
@pytest.mark.parametrize("method", QUADRATURE_METHODS)
@pytest.mark.parametrize("mbi", [True, False])
def test_fast_peaks_equals_captum_at_every_open_fraction(blocks, path, method, mbi, monkeypatch):
    """0%, 5%, 50% and 100% open cells, with closed peaks handled apart in the first block (exp2 path) or not
    (``scaled_dot_product_attention`` path, forced by a zero score bound), against captum."""
    from cell2net_attr.engines import peak_encoder

    if path == "sdpa":
        monkeypatch.setattr(peak_encoder, "MAX_LOG2_SCORE", -1.0)
    seed = 10 * blocks + len(method)
    g = torch.Generator().manual_seed(seed)
    spec = ModelSpec(n_peaks=20, peak_len=32, n_tfs=4, n_covariates=2, n_filters=(8, 8), n_channels=4,
                     kernel_size=3, n_dims=8, n_attn_blocks=blocks)
    module = random_module(spec, seed)
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (spec.n_peaks, 32), generator=g), 4).float()
    dist = torch.rand(spec.n_peaks, generator=g)
    acc, tf, cov = _open_fraction_inputs(spec, g)
    params = IGParams(n_steps=7, method=method, multiply_by_inputs=mbi, return_delta=True, target="peaks")
    engine = make_engine("fast", module, seq, dist, params)
    assert (engine.first is not None) == (path == "exp2" and blocks > 0)
    fast, d_fast = engine.attribute(acc, tf, cov)
    engine.one_cell = False  # the GPU's way: the cells of one open count together
    together = engine.attribute(acc, tf, cov)[0]
    ref, d_ref = make_engine("captum", module, seq, dist, params).attribute(acc, tf, cov)
    scale = ref.abs().max()
    assert scale > 0
    assert (fast - ref).abs().max() <= 1e-5 * scale and (together - ref).abs().max() <= 1e-5 * scale
    assert (d_fast - d_ref).abs().max() <= 1e-4 * (scale + 1)
    if mbi:  # a closed peak moves nothing: exactly 0, and so is a cell with every peak closed
        assert torch.all(fast[acc == 0] == 0) and torch.all(fast[0] == 0) and d_fast[0] == 0


def test_fast_peaks_with_another_head_equals_captum():
    """A head other than upstream's ReLU -> BatchNorm -> Dropout -> Linear is differentiated by autograd."""
    g = torch.Generator().manual_seed(5)
    spec = ModelSpec(n_peaks=10, peak_len=32, n_tfs=3, n_covariates=1, n_filters=(8, 8), n_channels=4,
                     kernel_size=3, n_dims=8, n_attn_blocks=1)
    module = random_module(spec, 5)
    module.fc[1] = torch.nn.Tanh()
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (spec.n_peaks, 32), generator=g), 4).float()
    dist = torch.rand(spec.n_peaks, generator=g)
    acc = torch.poisson(torch.full((4, spec.n_peaks), 1.0), generator=g)
    tf, cov = torch.rand(4, spec.n_tfs, generator=g), torch.randn(4, 1, generator=g)
    params = IGParams(n_steps=9, target="peaks")
    engine = make_engine("fast", module, seq, dist, params)
    assert engine.head_scale is None
    fast = engine.attribute(acc, tf, cov)[0]
    ref = make_engine("captum", module, seq, dist, params).attribute(acc, tf, cov)[0]
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("mbi", [True, False])
def test_fast_peaks_do_not_depend_on_batching(mbi):
    """A cell's attributions are the same numbers whatever cells are computed with it (the engine groups
    cells by their number of open peaks)."""
    g = torch.Generator().manual_seed(4)
    spec = ModelSpec(n_peaks=12, peak_len=32, n_tfs=3, n_covariates=1, n_filters=(8, 8), n_channels=4,
                     kernel_size=3, n_dims=16, n_attn_blocks=2)
    module = random_module(spec, 4)
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (spec.n_peaks, 32), generator=g), 4).float()
    dist = torch.rand(spec.n_peaks, generator=g)
    n = 40
    acc = torch.poisson(torch.full((n, spec.n_peaks), 1.0), generator=g)
    acc *= torch.rand(n, spec.n_peaks, generator=g) < torch.rand(n, 1, generator=g)  # open fractions 0-100%
    tf = torch.poisson(torch.full((n, spec.n_tfs), 2.0), generator=g)
    cov = torch.randn(n, 1, generator=g)
    engine = make_engine("fast", module, seq, dist, IGParams(n_steps=9, multiply_by_inputs=mbi, target="peaks"))
    whole = engine.attribute(acc, tf, cov)[0]
    perm = torch.randperm(n, generator=g)
    for size in (1, 3, 17):
        parts = [perm[i:i + size] for i in range(0, n, size)]
        got = torch.cat([engine.attribute(acc[r], tf[r], cov[r])[0] for r in parts])
        assert torch.equal(got, whole[perm]), size


def _peaks(demo_atlas, out, *extra, engine="fast", read=True):
    data, cks = demo_atlas
    r = CliRunner().invoke(app, ["run", str(cks[0]), str(data), "--target", "peaks", "--covariates", COVARIATES,
                                 "--engine", engine, "--n-steps", "16", "--delta", "-q", "-o", str(out), *extra])
    assert r.exit_code == 0, r.output
    if not read:
        return None
    with h5py.File(out) as f:
        return f["attributions"][:], [s.decode() for s in f["obs_names"][:]], f["convergence_delta"][:]


def test_peaks_through_where_shards_merge_and_run_many(demo_atlas, tmp_path):
    """Every other option works for peaks: --where equals the same cells by --idx, shards merged equal the
    whole run, and run-many --target peaks equals run."""
    import mudata as md

    data, cks = demo_atlas
    whole, cells, delta = _peaks(demo_atlas, tmp_path / "whole.h5")
    obs = md.read_h5mu(data).obs
    picked = [str(c) for c in obs.index[(obs["celltype"] == "NK") & (obs["cov0"] > 0)]]
    where, where_cells, _ = _peaks(demo_atlas, tmp_path / "w.h5", "--where", "celltype == 'NK' and cov0 > 0")
    idx, _, _ = _peaks(demo_atlas, tmp_path / "i.h5", "--idx", ",".join(picked))
    assert where_cells == picked and np.array_equal(where, idx)
    np.testing.assert_allclose(where, whole[[cells.index(c) for c in picked]], rtol=1e-6, atol=1e-7)
    (tmp_path / "shards").mkdir()
    for k in range(3):
        _peaks(demo_atlas, tmp_path / "shards" / "GA.h5", "--shard", f"{k}/3", read=False)
    shards = sorted(str(p) for p in (tmp_path / "shards").glob("GA-*.h5"))
    assert len(shards) == 3
    r = CliRunner().invoke(app, ["merge", *shards, "--out", str(tmp_path / "merged.h5"), "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "merged.h5") as f:
        assert f.attrs["target"] == "peaks" and np.array_equal(f["attributions"][:], whole)
        # the delta is F(x) - F(0) minus a sum: a difference of O(1) outputs computed in blocks of other
        # sizes, so it agrees to the outputs' float32 rounding, not bit for bit
        np.testing.assert_allclose(f["convergence_delta"][:], delta, rtol=0, atol=1e-7)
    r = CliRunner().invoke(app, ["run-many", str(cks[0]), str(data), "--target", "peaks", "--covariates",
                                 COVARIATES, "--n-steps", "16", "--delta", "--out-dir", str(tmp_path / "many"), "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "many" / f"{cks[0].stem}.h5") as f:
        np.testing.assert_allclose(f["attributions"][:], whole, rtol=1e-6, atol=1e-7)


def test_peaks_resume_after_kill_equals_uninterrupted(demo_atlas, tmp_path, monkeypatch):
    import signal
    import subprocess


    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "4")
    data, cks = demo_atlas
    ref, _, ref_delta = _peaks(demo_atlas, tmp_path / "ref.h5", "--batch-size", "1", "--idx", "0:30", engine="captum")
    out, partial = tmp_path / "p.h5", tmp_path / ".p.h5.partial"
    cmd = run_cmd(cks[0], data, out, "--target", "peaks", "--engine", "captum", "--batch-size", "1", "--n-steps", "16",
               "--idx", "0:30", "--delta", "-q")
    rc, err = interrupt(cmd, partial, signal.SIGKILL)
    assert rc == -9, err
    assert not out.exists() and list(partial.glob("chunk-*.npz"))
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert np.abs(f["attributions"][:] - ref).max() <= 1e-6 * np.abs(ref).max()
        assert np.abs(f["convergence_delta"][:] - ref_delta).max() <= 1e-6
