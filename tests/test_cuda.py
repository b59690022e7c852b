"""The CUDA path: every engine, the command line and run-many on a GPU give what they give on the CPU.

Marked ``cuda`` and skipped, with the reason, where torch sees no GPU. ``benchmarks/gpu_check.sh`` runs
them on a lent GPU machine (``-m cuda``). ``CELL2NET_TEST_DEVICE=cpu`` runs the same comparisons with the
CPU standing in for the GPU (what ``GPU_CHECK_DRY=1`` does): the code paths are checked, not the GPU.

The references are the CPU results of the same engines, which the rest of the suite checks against captum
and upstream 0.13. Comparisons run with TF32 off (torch's default lets cuDNN's convolutions use it): the
engines must agree in float32; :func:`test_tf32_default_moves_captum_within_its_precision` measures what
torch's default does to captum, the reference engine, which runs the whole module.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from cell2net_attr.engines.base import IGParams
from cell2net_attr.engines.mutagenesis import MutagenesisEngine
from cell2net_attr.engines.predict import PredictEngine
from cell2net_attr.engines.registry import make_engine
from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import GeneSpec, make_gene_models, random_module

from .conftest import COVARIATES, assert_ig_close

DEVICE = os.environ.get("CELL2NET_TEST_DEVICE", "cuda")
_NO_GPU = DEVICE.startswith("cuda") and not torch.cuda.is_available()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(_NO_GPU, reason=f"no CUDA GPU visible to torch {torch.__version__} "
                                       f"(CUDA build: {torch.version.cuda or 'none'})"),
]

#: Upstream's architecture, smaller: 24 peaks of 256 bp, 40 TFs, 2 covariates.
SPEC = ModelSpec(n_peaks=24, peak_len=256, n_tfs=40, n_covariates=2, n_filters=(64, 32, 32, 16), n_channels=4,
                 kernel_size=5, n_dims=16, n_attn_blocks=1)


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off for the comparisons (restored after): float32 on the GPU is then float32 on the CPU."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _inputs(spec: ModelSpec, n_cells: int, open_frac: float = 0.4, seed: int = 0):
    """One-hot sequences (N at a few positions), distances, metacell-like accessibility, TFs, covariates."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.eye(4)[torch.randint(0, 4, (spec.n_peaks, spec.peak_len), generator=g)]
    seq[0, [0, 5, spec.peak_len - 1]] = 0.0
    dist = torch.rand(spec.n_peaks, generator=g)
    is_open = torch.rand(n_cells, spec.n_peaks, generator=g) < open_frac
    acc = (1 + torch.poisson(torch.full((n_cells, spec.n_peaks), 5.0), generator=g)) * is_open
    tf = torch.poisson(torch.full((n_cells, spec.n_tfs), 2.0), generator=g)
    cov = torch.randn(n_cells, spec.n_covariates, generator=g)
    return seq, dist, acc, tf, cov


def _attribute(engine: str, device: str, params: IGParams, n_cells: int, seed: int = 1):
    """Attributions (and deltas) of ``engine`` on ``device``, as CPU arrays."""
    module = random_module(SPEC, seed=seed).to(device)
    seq, dist, acc, tf, cov = (t.to(device) for t in _inputs(SPEC, n_cells, seed=seed))
    attr, delta = make_engine(engine, module, seq, dist, params).attribute(acc, tf, cov)
    return attr.float().cpu().numpy(), None if delta is None else delta.float().cpu().numpy()


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "exact"])
def test_fast_tf_engine_on_the_device_equals_the_cpu(method):
    params = IGParams(n_steps=50, method=method, return_delta=method != "exact")
    got, got_delta = _attribute("fast", DEVICE, params, 300)
    want, want_delta = _attribute("fast", "cpu", params, 300)
    assert np.isfinite(got).all()
    assert_ig_close(got, want, method=method, n_steps=50)
    if want_delta is not None:
        np.testing.assert_allclose(got_delta, want_delta, rtol=0, atol=1e-5 * max(1.0, np.abs(want).sum(1).max()))


@pytest.mark.parametrize("mbi", [True, False])
def test_fast_peak_engine_on_the_device_equals_the_cpu(mbi):
    params = IGParams(n_steps=30, target="peaks", multiply_by_inputs=mbi)
    got, _ = _attribute("fast", DEVICE, params, 24)
    want, _ = _attribute("fast", "cpu", params, 24)
    assert np.isfinite(got).all()
    assert_ig_close(got, want, n_steps=30)


@pytest.mark.parametrize("target", ["tfs", "peaks"])
def test_captum_on_the_device_equals_the_fast_engine_there(target):
    """The reference engine on the GPU against the fast one on the GPU (and both against the CPU's)."""
    params = IGParams(n_steps=20, target=target)
    ref, _ = _attribute("captum", DEVICE, params, 4)
    fast, _ = _attribute("fast", DEVICE, params, 4)
    cpu, _ = _attribute("captum", "cpu", params, 4)
    assert_ig_close(fast, ref, n_steps=20)
    assert_ig_close(ref, cpu, n_steps=20)


def test_tf32_default_moves_captum_within_its_precision():
    """With torch's default (cuDNN may use TF32 for convolutions), captum's attributions on the GPU move by
    about TF32's precision (2 ** -11), not more. Measured and printed: the GPU check's log keeps it."""
    torch.backends.cudnn.allow_tf32 = True
    params = IGParams(n_steps=20)
    default, _ = _attribute("captum", DEVICE, params, 4)
    torch.backends.cudnn.allow_tf32 = False
    exact, _ = _attribute("captum", DEVICE, params, 4)
    deviation = float(np.abs(default - exact).max() / np.abs(exact).max())
    print(f"captum on {DEVICE}: TF32 allowed moves attributions by {deviation:.2e} of max|attr|")
    assert deviation < 2e-2


def _mutagenesis_case(device: str, seed: int = 3, n_cells: int = 40):
    module = random_module(SPEC, seed=seed).to(device)
    seq, dist, acc, tf, cov = (t.to(device) for t in _inputs(SPEC, n_cells, seed=seed))
    positions = torch.tensor([0, 0, 1, 100, 128, 255, 255], device=device)
    bases = torch.tensor([1, 2, 3, 0, 2, 1, 3], device=device)
    return module, seq, dist, (acc, tf, cov), (positions, bases)


@pytest.mark.parametrize("engine", [PredictEngine, MutagenesisEngine])
def test_mutagenesis_engines_on_the_device_equal_the_cpu(engine):
    rates = {}
    for device in (DEVICE, "cpu"):
        module, seq, dist, inputs, (pos, bases) = _mutagenesis_case(device)
        eng = engine(module, seq, dist)
        rates[device] = (eng.reference_rates(*inputs).cpu(), eng.mutant_rates(3, pos, bases, *inputs).cpu(),
                         eng.mutant_rates(0, pos, bases, *inputs).cpu())
    for got, want in zip(rates[DEVICE], rates["cpu"]):
        assert torch.isfinite(got).all() and got.shape == want.shape
        assert float(((got - want).abs() / want).max()) <= 1e-5


def test_structured_mutagenesis_on_the_device_equals_the_forward_there():
    module, seq, dist, inputs, (pos, bases) = _mutagenesis_case(DEVICE, seed=5)
    ref, got = PredictEngine(module, seq, dist), MutagenesisEngine(module, seq, dist)
    for peak in (0, SPEC.n_peaks - 1):
        want, have = ref.mutant_rates(peak, pos, bases, *inputs), got.mutant_rates(peak, pos, bases, *inputs)
        assert have.device.type == torch.device(DEVICE).type
        assert float(((have - want).abs() / want).max()) <= 1e-5


# --- the command line and run-many ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_atlas(tmp_path_factory):
    """A full .h5mu of 300 cells and three gene models."""
    out = tmp_path_factory.mktemp("cuda-atlas")
    genes = [GeneSpec("GA", 12, 20), GeneSpec("GB", 6, 9), GeneSpec("GC", 20, 14)]
    return make_gene_models(out, genes, n_cells=300, n_tfs_total=24, n_covariates=2, seed=4)


def _cli(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cell2net_attr", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _read(path):
    with h5py.File(path, "r") as f:
        return f["attributions"][()], [str(n) for n in f["obs_names"].asstr()[()]], dict(f.attrs)


#: The two sides of a comparison: the device under test, and the CPU (a dry run makes both the CPU).
SIDES = {"device": DEVICE, "cpu": "cpu"}


@pytest.mark.parametrize("target", ["tfs", "peaks"])
def test_cli_run_on_the_device_equals_the_cpu(small_atlas, tmp_path, target):
    data, checkpoints = small_atlas
    for side, device in SIDES.items():
        _cli("run", checkpoints[0], data, "--covariates", COVARIATES, "--target", target, "--n-steps", "30",
             "--device", device, "--out", tmp_path / f"{side}.h5", *(["--idx", "0:40"] if target == "peaks" else []))
    got, names, attrs = _read(tmp_path / "device.h5")
    want, want_names, _ = _read(tmp_path / "cpu.h5")
    assert names == want_names and attrs["device"].startswith(torch.device(DEVICE).type)
    assert_ig_close(got, want, n_steps=30)


def test_run_many_on_the_device_equals_the_cpu(small_atlas, tmp_path):
    data, checkpoints = small_atlas
    models = checkpoints[0].parent
    for side, device in SIDES.items():
        _cli("run-many", models, data, "--out-dir", tmp_path / side, "--covariates", COVARIATES, "--device", device,
             "--quiet")
    for ck in checkpoints:
        got, names, _ = _read(tmp_path / "device" / f"{ck.stem}.h5")
        want, want_names, _ = _read(tmp_path / "cpu" / f"{ck.stem}.h5")
        assert names == want_names
        assert_ig_close(got, want)
