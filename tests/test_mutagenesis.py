"""Saturation mutagenesis: the structured engine equals the plain forward, both reproduce upstream 0.13,
and the reduction is upstream's, recomputed here literally from per-cell predictions."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import cell2net_attr
from cell2net_attr.data.rows import SharedRows
from cell2net_attr.engines.ism_effect import ism_effect, position_scores, upstream_mutants
from cell2net_attr.engines.mutagenesis import MutagenesisEngine
from cell2net_attr.engines.predict import PredictEngine
from cell2net_attr.errors import UserError
from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import random_module

from .conftest import UPSTREAM

F64 = torch.float64
ENGINES = {"predict": PredictEngine, "mutagenesis": MutagenesisEngine}
#: Upstream computes in float32 and its effects are differences of rates about 1e-3 apart: the exact
#: (float64) effects differ from its files by up to 1.8e-5 of max|effect| (measured), so that is the
#: floor for any engine that does not repeat upstream's float32 rounding bit for bit.
ISM_TOL = 5e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of small tensor operations: on a shared 2-core machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- random models ------------------------------------------------------------------------------

def _case(n_peaks=4, length=64, n_tfs=5, n_cov=2, filters=(8, 6), kernel=5, dims=8, blocks=1, seed=0,
          dtype=torch.float32, n_cells=9):
    spec = ModelSpec(n_peaks=n_peaks, peak_len=length, n_tfs=n_tfs, n_covariates=n_cov, n_filters=filters,
                     n_channels=4, kernel_size=kernel, n_dims=dims, n_attn_blocks=blocks)
    module = random_module(spec, seed).to(dtype)
    g = torch.Generator().manual_seed(seed)
    seq = torch.eye(4, dtype=dtype)[torch.randint(0, 4, (n_peaks, length), generator=g)]
    seq[0, [0, 2, length - 1]] = 0.0  # N at both ends of peak 0
    dist = torch.rand(n_peaks, generator=g, dtype=dtype)
    acc = torch.cat([torch.poisson(torch.full((n_cells - 2, n_peaks), 1.5, dtype=dtype), generator=g),
                     8 * torch.rand(2, n_peaks, generator=g, dtype=dtype)])
    tf = torch.poisson(torch.full((n_cells, n_tfs), 2.0, dtype=dtype), generator=g)
    cov = torch.randn(n_cells, n_cov, generator=g, dtype=dtype)
    return module, seq, dist, (acc, tf, cov)


def _mutants(length):
    """First and last positions (every base, the stored one included), and a few inside."""
    pos = [0, 0, 0, 0, 1, 2, 2, length // 2, length - 2, length - 1, length - 1, length - 1, length - 1]
    return torch.tensor(pos), torch.tensor([0, 1, 2, 3, 2, 0, 3, 1, 3, 0, 1, 2, 3])


def _compare(module, seq, dist, inputs, tol, dtype=None, **kw):
    ref, got = PredictEngine(module, seq, dist), MutagenesisEngine(module, seq, dist, dtype=dtype, **kw)
    r0, r1 = ref.reference_rates(*inputs), got.reference_rates(*inputs)
    assert r1.shape == r0.shape and torch.all(torch.isfinite(r1))
    assert ((r1.to(r0.dtype) - r0).abs() / r0).max() <= tol
    pos, bases = _mutants(seq.shape[1])
    for peak in sorted({0, len(seq) - 1}):
        m0, m1 = ref.mutant_rates(peak, pos, bases, *inputs), got.mutant_rates(peak, pos, bases, *inputs)
        assert m1.shape == (len(inputs[0]), len(pos))
        assert ((m1.to(m0.dtype) - m0).abs() / m0).max() <= tol
        assert not torch.equal(m0[:, 1:], m0[:, :1].expand(-1, len(pos) - 1))  # the mutants do move the rate


@pytest.mark.parametrize("kernel", [3, 4, 5, 7])
@pytest.mark.parametrize("blocks", [0, 1, 2, 3])
def test_structured_equals_forward_float32(kernel, blocks):
    _compare(*_case(kernel=kernel, blocks=blocks, seed=kernel + 10 * blocks), tol=1e-5)


@pytest.mark.parametrize("n_peaks,n_cov,filters,dims,blocks", [
    (1, 0, (8,), 4, 1), (3, 1, (16, 8, 4), 8, 2), (6, 3, (64, 32, 32, 16), 16, 1), (5, 2, (4, 4), 12, 3)])
def test_structured_is_exact_in_float64(n_peaks, n_cov, filters, dims, blocks):
    """In double precision the structured engine is the forward pass up to rounding: the algebra is exact."""
    case = _case(n_peaks=n_peaks, n_cov=n_cov, filters=filters, dims=dims, blocks=blocks, dtype=F64, seed=n_peaks)
    _compare(*case, tol=1e-12)
    _compare(*case, tol=1e-12, block_pairs=5)  # blocks that split both cells and mutants


def test_float64_engine_of_a_float32_module():
    module, seq, dist, inputs = _case(blocks=2, seed=4)
    exact = MutagenesisEngine(module, seq, dist, dtype=F64)
    assert exact.reference_rates(*inputs).dtype == F64 and next(module.parameters()).dtype == torch.float32
    want = PredictEngine(copy.deepcopy(module).double(), seq.double(), dist.double())
    got = exact.mutant_rates(0, *_mutants(64), *inputs)
    assert ((got - want.mutant_rates(0, *_mutants(64), *[x.double() for x in inputs])).abs() / got).max() <= 1e-12


def test_large_attention_scores():
    """Scores far beyond float32's exp range: the leave-one-out log-sum-exp and sigmoid never overflow."""
    module, seq, dist, inputs = _case(blocks=2, seed=7)
    with torch.no_grad():
        for block in module.attn_blocks:
            block.attn.in_proj_weight[: 2 * block.attn.embed_dim] *= 30.0
    exact = PredictEngine(copy.deepcopy(module).double(), seq.double(), dist.double())
    got = MutagenesisEngine(module, seq, dist)
    pos, bases = _mutants(seq.shape[1])
    want = exact.mutant_rates(3, pos, bases, *[x.double() for x in inputs])
    rates = got.mutant_rates(3, pos, bases, *inputs)
    assert torch.all(torch.isfinite(rates)) and ((rates.double() - want).abs() / want).max() <= 1e-4


def test_blocks_cache_and_device():
    """Results do not depend on the block sizes, on calling block by block, or on repeating a call."""
    module, seq, dist, (acc, tf, cov) = _case(blocks=1, seed=3, n_cells=11)
    pos, bases = upstream_mutants(seq[1].numpy())
    pos, bases = pos[::9], bases[::9]  # 22 mutants
    whole = MutagenesisEngine(module, seq, dist).mutant_rates(1, pos, bases, acc, tf, cov)
    eng = MutagenesisEngine(module, seq, dist, block_pairs=7)
    parts = torch.cat([eng.mutant_rates(1, pos, bases, acc[i:i + 4], tf[i:i + 4], cov[i:i + 4]) for i in (0, 4, 8)])
    assert eng._cache is not None and parts.device == whole.device
    assert torch.allclose(parts, whole, rtol=1e-6, atol=0)
    assert torch.equal(eng.mutant_rates(1, pos, bases, acc, tf, cov), eng.mutant_rates(1, pos, bases, acc, tf, cov))
    torch.set_num_threads(2)  # the engine computes with its own thread count and restores the caller's
    try:
        two = MutagenesisEngine(module, seq, dist, threads=None).mutant_rates(1, pos, bases, acc, tf, cov)
        one = MutagenesisEngine(module, seq, dist, threads=1).mutant_rates(1, pos, bases, acc, tf, cov)
        assert torch.allclose(one, two, rtol=1e-6, atol=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    stored = int(seq[2, 5].argmax())
    for engine in (eng, PredictEngine(module, seq, dist)):  # changing a base to itself is the reference
        same = engine.mutant_rates(2, [5], [stored], acc, tf, cov)[:, 0]
        assert torch.allclose(same, engine.reference_rates(acc, tf, cov), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", list(ENGINES))
def test_bad_mutants_are_user_errors(name):
    module, seq, dist, inputs = _case()
    engine = ENGINES[name](module, seq, dist)
    for args, param in [((4, [0], [0]), "peak"), ((-1, [0], [0]), "peak"), ((0, [64], [0]), "positions"),
                        ((0, [-1], [0]), "positions"), ((0, [3], [4]), "bases"), ((0, [1, 2], [0]), "bases")]:
        with pytest.raises(UserError) as err:
            engine.mutant_rates(*args, *inputs)
        assert err.value.param == param
    assert engine.mutant_rates(0, [], [], *inputs).shape == (9, 0)


# --- the reduction, against upstream's algorithm written out in numpy --------------------------------

def _upstream_numpy(seq_str, pred_ref, predict_alt, logfc, smoothing, window, mbi):
    """``saturation_mutagenesis`` as upstream writes it, over per-cell predictions (float64 sums)."""
    scores = []
    for i in range(len(seq_str)):
        pred_alt = np.zeros(len(pred_ref))
        for alt in "ACGT":
            if alt != seq_str[i]:
                pred_alt += predict_alt(i, alt)
        pred_alt /= 3
        scores.append(np.log2(np.mean(pred_ref) / np.mean(pred_alt)) if logfc else np.mean(pred_ref - pred_alt))
    scores = np.array(scores)
    if smoothing:
        scores = np.convolve(scores, np.ones(window) / window, mode="same")
    onehot = np.array([[float(c == b) for c in seq_str] for b in "ACGT"])
    scores = np.tile(scores, (4, 1))
    return scores * onehot if mbi else scores


@pytest.fixture(scope="module")
def small_ism():
    """Per-cell reference-engine predictions of every upstream mutant of a 32-bp peak with two Ns."""
    module, seq, dist, inputs = _case(length=32, seed=5)
    engine = PredictEngine(module, seq, dist)
    pos, bases = upstream_mutants(seq[0].numpy())
    ref = engine.reference_rates(*inputs).double().numpy()
    alt = engine.mutant_rates(0, pos, bases, *inputs).double().numpy()  # (cells, M)
    seq_str = "".join("ACGT"[int(r.argmax())] if r.sum() else "N" for r in seq[0])
    lookup = {(int(p), "ACGT"[int(b)]): alt[:, m] for m, (p, b) in enumerate(zip(pos, bases))}
    return seq[0].numpy(), seq_str, ref, alt, lookup


@pytest.mark.parametrize("logfc", [False, True])
@pytest.mark.parametrize("smoothing,window", [(False, 3), (True, 1), (True, 2), (True, 3), (True, 4), (True, 7)])
@pytest.mark.parametrize("mbi", [True, False])
def test_reduction_is_upstreams(small_ism, logfc, smoothing, window, mbi):
    onehot, seq_str, ref, alt, lookup = small_ism
    assert seq_str.count("N") == 3 and len(alt[0]) == 3 * 32 + 3
    want = _upstream_numpy(seq_str, ref, lambda i, b: lookup[i, b], logfc, smoothing, window, mbi)
    got, seq = ism_effect(ref.sum(), alt.sum(0), len(ref), onehot, multiply_by_inputs=mbi, logfc=logfc,
                          smoothing=smoothing, window_size=window, return_seq=True)
    assert got.shape == (4, 32) and got.dtype == np.float64 and np.allclose(got, want, rtol=1e-12, atol=1e-15)
    assert np.array_equal(seq, onehot.T) and seq.dtype == np.float32
    assert np.array_equal(ism_effect(ref.sum(), alt.sum(0), len(ref), onehot, multiply_by_inputs=mbi, logfc=logfc,
                                     smoothing=smoothing, window_size=window), got)


def test_n_rule(small_ism):
    """Upstream divides the four predictions at N by three; ``n_rule="mean"`` by four."""
    onehot, seq_str, ref, alt, lookup = small_ism
    n = seq_str.index("N")
    four = sum(lookup[n, b] for b in "ACGT")
    up = position_scores(ref.sum(), alt.sum(0), len(ref), onehot)
    mean = position_scores(ref.sum(), alt.sum(0), len(ref), onehot, n_rule="mean")
    assert np.isclose(up[n], np.mean(ref - four / 3), rtol=1e-12)
    assert np.isclose(mean[n], np.mean(ref - four / 4), rtol=1e-12)
    assert up[n] < -0.25 * ref.mean()  # upstream's N score is about -mean(ref) / 3
    assert abs(mean[n]) < 0.1 * abs(up[n])
    other = [i for i, c in enumerate(seq_str) if c != "N"]
    assert np.array_equal(up[other], mean[other])
    # smoothed and multiplied by the one-hot: the N column is zero, its neighbour (between the Ns at 0
    # and 2) carries two thirds of upstream's N score
    assert n == 0 and seq_str[1] != "N" and seq_str[2] == "N"
    smoothed = ism_effect(ref.sum(), alt.sum(0), len(ref), onehot)
    assert np.all(smoothed[:, 0] == 0) and np.isclose(smoothed[:, 1].sum(), up[:3].mean(), rtol=1e-12)
    assert smoothed[:, 1].sum() < 0.5 * up[0]
    assert abs(ism_effect(ref.sum(), alt.sum(0), len(ref), onehot, n_rule="mean")[:, 1].sum()) < 0.1 * abs(up[0])


def test_reduction_errors(small_ism):
    onehot, _, ref, alt, _ = small_ism
    for kw, param in [({"window_size": 0}, "window_size"), ({"window_size": 33}, "window_size"),
                      ({"window_size": 2.0}, "window_size"), ({"n_rule": "skip"}, "n_rule")]:
        with pytest.raises(UserError) as err:
            ism_effect(ref.sum(), alt.sum(0), len(ref), onehot, **kw)
        assert err.value.param == param
    with pytest.raises(UserError):
        ism_effect(ref.sum(), alt.sum(0), 0, onehot)
    with pytest.raises(ValueError):
        ism_effect(ref.sum(), alt.sum(0)[1:], len(ref), onehot)
    pos, bases = upstream_mutants(onehot)
    assert np.all(np.diff(pos) >= 0) and not onehot[pos, bases].any()


# --- upstream's files ----------------------------------------------------------------------------

def _ism_manifest():
    path = UPSTREAM / "ref" / "ism" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ism_cases():
    man = _ism_manifest()
    if man is None:
        return [pytest.param("missing", {}, marks=pytest.mark.usefixtures("upstream"), id="fixtures-missing")]
    return [pytest.param(g, r, id=r["file"]) for g, m in man["models"].items() for r in m["refs"]]


_LOADED: dict = {}


def _gene(upstream, gene, layout):
    """The model, the stored one-hot sequences and the inputs of all cells in obs order, read once per test run."""
    if (gene, layout) not in _LOADED:
        data = upstream / "models" / f"{gene}.h5mu" if layout == "per-gene" else upstream / "full.h5mu"
        m = cell2net_attr.load_model(upstream / "models" / f"{gene}.pt", data, covariates=["cov0", "cov1"],
                                     device="cpu")
        batch = SharedRows([m.data]).read(np.arange(m.data.n_cells))[0]
        _LOADED[gene, layout] = (m, (batch.peak_acc, batch.tf_exp, batch.covariates))
    return _LOADED[gene, layout]


def _peak(m, peak):
    return peak if isinstance(peak, int) else list(m.data.peaks).index(peak)


@pytest.mark.parametrize("layout", ["per-gene", "full"])
@pytest.mark.parametrize("gene", ["GENE0", "TF0"])
@pytest.mark.parametrize("name", list(ENGINES))
def test_variants_reproduce_upstream_predict(upstream, name, gene, layout):
    m, inputs = _gene(upstream, gene, layout)
    want = np.load(upstream / "ref" / "ism" / f"{gene}.variants.npz")
    assert list(want["obs_names"]) == list(m.data.obs_names)
    engine = ENGINES[name](m.module, m.data.peak_seq, m.data.peak_dist)
    ref = engine.reference_rates(*inputs).numpy()
    assert ref.dtype == np.float32 and np.abs(ref / want["pred_ref"] - 1).max() <= 1e-6
    for k, row in enumerate(_ism_manifest()["models"][gene]["variants"]["rows"]):
        p = _peak(m, row["peak"])
        assert m.data.peak_seq[p, row["offset"], "ACGT".index(row["ref"])] == 1.0
        alt = engine.mutant_rates(p, [row["offset"]], ["ACGT".index(row["alt"])], *inputs)[:, 0].numpy()
        assert np.abs(alt / want["pred_alt"][k] - 1).max() <= 1e-6
        assert np.abs(alt / ref - 1).max() > 1e-4  # the variant does move the prediction


@pytest.mark.parametrize("layout", ["per-gene", "full"])
@pytest.mark.parametrize("gene,case", _ism_cases())
def test_structured_reproduces_upstream_ism(upstream, gene, case, layout):
    m, inputs = _gene(upstream, gene, layout)
    peak = _peak(m, case["peak"])
    onehot = m.data.peak_seq[peak]
    assert (onehot.sum(1) == 0).any() == (peak in _ism_manifest()["models"][gene]["peaks_with_N"])
    engine = MutagenesisEngine(m.module, m.data.peak_seq, m.data.peak_dist)
    pos, bases = upstream_mutants(onehot)
    ref = engine.reference_rates(*inputs).double().numpy()
    alt = engine.mutant_rates(peak, pos, bases, *inputs).double().numpy()
    want = np.load(upstream / "ref" / "ism" / case["file"])
    got = ism_effect(ref.sum(), alt.sum(0), len(ref), onehot, **case["kwargs"])
    assert got.shape == want.shape and np.abs(got - want).max() <= ISM_TOL * np.abs(want).max()


@pytest.mark.parametrize("gene,case", _ism_cases())
def test_reference_reproduces_upstream_ism_at_positions(upstream, gene, case):
    """The plain forward is slow (one pass over every cell per mutant), so it is checked at the first and
    last positions and at the first N, with every score their smoothing windows read."""
    m, inputs = _gene(upstream, gene, "per-gene")
    peak = _peak(m, case["peak"])
    onehot = m.data.peak_seq[peak]
    length = len(onehot)
    half = case["kwargs"].get("window_size", 3) // 2 if case["kwargs"].get("smoothing", True) else 0
    targets = [0, length - 1] + [int(n) for n in np.flatnonzero(onehot.sum(1) == 0)[:1]]
    needed = sorted({p for t in targets for p in range(max(0, t - half), min(length, t + half + 1))})
    pos, bases = upstream_mutants(onehot)
    keep = np.isin(pos, needed)
    engine = PredictEngine(m.module, m.data.peak_seq, m.data.peak_dist)
    ref = engine.reference_rates(*inputs).double().numpy()
    sums = np.full(len(pos), np.nan)
    sums[keep] = engine.mutant_rates(peak, pos[keep], bases[keep], *inputs).double().numpy().sum(0)
    got = ism_effect(ref.sum(), sums, len(ref), onehot, **case["kwargs"])  # NaN away from the windows read
    want = np.load(upstream / "ref" / "ism" / case["file"])
    assert np.isfinite(got[:, targets]).all()
    assert np.abs(got[:, targets] - want[:, targets]).max() <= ISM_TOL * np.abs(want).max()
