"""The fast engine against the captum reference on randomly built models, and the exact method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cell2net_attr
from cell2net_attr.engines.base import QUADRATURE_METHODS, IGParams
from cell2net_attr.engines.registry import make_engine
from cell2net_attr.errors import UserError
from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import GeneSpec, make_gene_models

from .conftest import assert_ig_close

SEEDS = [11, 12, 13, 14]


def _random_arch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n_stages = int(rng.integers(2, 5))
    return dict(
        n_filters=tuple(int(x) for x in rng.choice([8, 12, 16], n_stages)),
        kernel_size=int(rng.choice([3, 4, 5, 7])),
        n_dims=int(rng.choice([8, 12, 16])),
        n_attn_blocks=int(rng.integers(1, 4)),
        peak_len=int(2 ** n_stages * rng.integers(3, 9)),
    )


@pytest.fixture(scope="module", params=SEEDS)
def random_model(request, tmp_path_factory):
    seed = request.param
    rng = np.random.default_rng(seed)
    arch = _random_arch(seed)
    gene = GeneSpec("G", int(rng.integers(1, 10)), int(rng.integers(1, 15)))
    n_cov = int(rng.integers(0, 4))
    data, (ck,) = make_gene_models(tmp_path_factory.mktemp(f"rand{seed}"), [gene], n_cells=12, n_tfs_total=16,
                                   n_covariates=n_cov, seed=seed, **arch)
    model = cell2net_attr.load_model(ck, data, covariates=[f"cov{j}" for j in range(n_cov)], device="cpu")
    model.built_from = ModelSpec(n_peaks=gene.n_peaks, peak_len=arch["peak_len"], n_tfs=gene.n_tfs,
                                 n_covariates=n_cov, n_filters=arch["n_filters"], n_channels=4,
                                 kernel_size=arch["kernel_size"], n_dims=arch["n_dims"],
                                 n_attn_blocks=arch["n_attn_blocks"])  # what the generator was asked for
    yield model
    model.close()


def test_spec_is_inferred_from_shapes(random_model):
    """Every size the checkpoint's reader infers from the state dict equals the one the model was built with."""
    assert random_model.checkpoint.spec == random_model.built_from


@pytest.mark.parametrize("method", QUADRATURE_METHODS)
@pytest.mark.parametrize("mbi", [True, False])
def test_fast_equals_captum(random_model, method, mbi):
    for n_steps in (2, 7) if method != "gausslegendre" else (1, 7, 30):
        kw = dict(idx=None, n_steps=n_steps, multiply_by_inputs=mbi, method=method, num_workers=0)
        ref = cell2net_attr.tf_attr(random_model, engine="captum", batch_size=4, **kw)
        fast = cell2net_attr.tf_attr(random_model, engine="fast", batch_size=5, **kw)
        assert np.abs(ref).max() > 0
        assert_ig_close(fast, ref, method, n_steps)


def _attr_delta(model, method, n_steps, mbi=True):
    from cell2net_attr.api import attribute

    return attribute(model, None, 64, 0, IGParams(n_steps, method, mbi, return_delta=True))


def test_exact_is_complete_and_quadrature_converges_to_it(random_model):
    exact, delta = _attr_delta(random_model, "exact", 1)
    scale = np.abs(exact).max()
    f_gap = exact.sum(1) - delta  # F(x) - F(baseline)
    assert np.abs(delta).max() <= 1e-5 * max(np.abs(f_gap).max(), 1e-3)
    errors = [np.abs(_attr_delta(random_model, "riemann_trapezoid", n)[0] - exact).max() for n in (4, 32, 512)]
    # the integrand is a step function of alpha, so Riemann sums converge like 1/n
    assert errors[-1] <= max(5e-3 * scale, 1e-6)
    assert errors[-1] <= errors[0] / 8
    gl = _attr_delta(random_model, "gausslegendre", 400)[0]
    assert np.abs(gl - exact).max() <= 5e-3 * scale


def test_exact_needs_the_cell2net_head(random_model):
    module = random_model.module
    seq = torch.from_numpy(random_model.data.peak_seq)
    dist = torch.from_numpy(random_model.data.peak_dist)
    original = module.fc[1]
    module.fc[1] = torch.nn.Tanh()
    try:
        with pytest.raises(UserError, match="ReLU -> BatchNorm1d"):
            make_engine("fast", module, seq, dist, IGParams(method="exact"))
        # the quadrature methods still work with any head after the first Linear
        make_engine("fast", module, seq, dist, IGParams(method="gausslegendre"))
    finally:
        module.fc[1] = original


def test_delta_matches_captum_definition(random_model):
    """Convergence delta = sum(attr) - (F(x) - F(0)), the same from both engines."""
    from cell2net_attr.api import attribute

    p = IGParams(25, "gausslegendre", True, return_delta=True)
    a_ref, d_ref = attribute(random_model, [0, 3, 5], 4, 0, p, engine="captum")
    a_fast, d_fast = attribute(random_model, [0, 3, 5], 4, 0, p, engine="fast")
    assert np.allclose(d_ref, d_fast, atol=1e-5 * max(1.0, np.abs(a_ref).max()))


@pytest.mark.parametrize("method", QUADRATURE_METHODS)
@pytest.mark.parametrize("n_steps", [2, 3, 17, 100, 1000])
def test_quadrature_is_captums_to_the_bit(method, n_steps):
    from captum.attr._utils.approximation_methods import approximation_parameters

    from cell2net_attr.engines.quadrature import quadrature

    step_fn, alpha_fn = approximation_parameters(method)
    assert quadrature(method, n_steps) == (tuple(alpha_fn(n_steps)), tuple(step_fn(n_steps)))


def test_riemann_needs_two_steps():
    with pytest.raises(UserError, match="at least 2 steps"):
        IGParams(1, "riemann_left")


def test_module_spec_roundtrip():
    spec = ModelSpec(n_peaks=3, peak_len=64, n_tfs=2, n_covariates=0, n_filters=(8, 8), n_channels=4,
                     kernel_size=4, n_dims=8, n_attn_blocks=2)
    assert spec.embd_len == 16 and spec.head_in == 3 * 9 + 2


def test_folded_sequence_tower_equals_the_module(random_model):
    """forward_inference (BatchNorm folded, ELUs in place) against the module's own forward, N letters included."""
    module = random_model.module.eval()
    seq = torch.from_numpy(random_model.data.peak_seq).unsqueeze(0)
    assert (seq.sum(-1) == 0).any(), "the data has no N: the check would miss the zero rows"
    with torch.no_grad():
        expected = module.encode_sequences(seq)
    got = module.seq_encoder.forward_inference(seq)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module.seq_encoder.forward_inference(seq.repeat(2, 1, 1, 1))[1], expected[0],
                               rtol=1e-5, atol=1e-6)


def _tower_as_folded_before(encoder, seq):
    """The folded tower as it was computed before the stem table: the stem convolved, ELU before the pooling."""
    import torch.nn.functional as F

    from cell2net_attr.model.architecture import _fold_batchnorm

    x = F.elu(encoder.stem(seq.permute(0, 3, 1, 2)), encoder.stem_conv[1].alpha)
    for i in range(0, len(encoder.conv_tower), 2):
        conv, bn, elu, pool = encoder.conv_tower[i]
        weight, bias = _fold_batchnorm(conv, bn)
        x = pool(F.elu(F.conv2d(x, weight, bias, padding=conv.padding), elu.alpha))
        conv_1x1, elu_1x1 = encoder.conv_tower[i + 1]
        x = F.elu(conv_1x1(x), elu_1x1.alpha) + x
    return torch.flatten(x.permute(0, 2, 1, 3), start_dim=2)


@pytest.mark.parametrize("kernel", [3, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stem_table_is_the_convolution(kernel, dtype):
    """For one-hot sequences the stem and its ELU are looked up per window of letters (N and the padding at
    both ends included), and the ELU runs after the pooling: the tower's values are the convolution's, to
    the last bits (the table's convolution may sum a window's products in another order). Anything not
    one-hot goes through the convolution itself."""
    import torch.nn.functional as F

    from cell2net_attr.model.architecture import _window_codes
    from cell2net_attr.synthetic import random_module

    spec = ModelSpec(n_peaks=6, peak_len=512, n_tfs=2, n_covariates=0, n_filters=(8, 4), n_channels=4,
                     kernel_size=kernel, n_dims=8, n_attn_blocks=1)
    encoder = random_module(spec, seed=kernel).seq_encoder.to(dtype)
    g = torch.Generator().manual_seed(kernel)
    seq = torch.eye(5, 4, dtype=dtype)[torch.randint(0, 5, (2, 6, 512), generator=g)]  # letter 4: N
    seq[0, 0, :3] = 0.0
    seq[1, 5, -2:] = 0.0
    assert 5 ** kernel <= seq[..., 0].numel(), "the sequences are too short for the table to be used"
    ulps = {"rtol": 4 * torch.finfo(dtype).eps, "atol": 4 * torch.finfo(dtype).eps}
    with torch.no_grad():
        direct = F.elu(encoder.stem(seq.permute(0, 3, 1, 2)))
        assert _window_codes(seq, kernel) is not None
        torch.testing.assert_close(encoder.stem_elu(seq), direct, **ulps)
        torch.testing.assert_close(encoder.stem_elu(seq[1:]), direct[1:], **ulps)
        torch.testing.assert_close(encoder.forward_inference(seq), _tower_as_folded_before(encoder, seq),
                                   rtol=1e3 * ulps["rtol"], atol=1e3 * ulps["atol"])
        two_bases = seq.clone()
        two_bases[1, 2, 7] = 1.0
        for other in (seq * 0.5, two_bases, seq + (seq == 0) * 1e-3):
            assert _window_codes(other, kernel) is None
            assert torch.equal(encoder.stem_elu(other), F.elu(encoder.stem(other.permute(0, 3, 1, 2))))


def test_folded_sequence_tower_refuses_train_mode(random_model):
    encoder = random_model.module.seq_encoder
    try:
        with pytest.raises(RuntimeError, match="eval mode only"):
            encoder.train().forward_inference(torch.zeros(1, 1, random_model.module.spec.peak_len, 4))
    finally:
        encoder.eval()


def test_module_from_state_equals_a_built_one(random_model):
    """from_state (a copied template tree) against Cell2NetModule + load_state_dict: same repr, same
    parameters, same forward; two modules from one template share nothing."""
    from dataclasses import replace

    from cell2net_attr.model.architecture import Cell2NetModule, from_state

    spec = random_model.module.spec
    state = {k: v.clone() for k, v in random_model.checkpoint.state_dict.items()}
    built = Cell2NetModule(spec)
    built.load_state_dict(state, strict=True)
    built.eval()
    got = from_state(spec, state)
    assert repr(got) == repr(built) and got.spec == spec and not got.training
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in got.parameters())
    assert {k: v.shape for k, v in got.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    inputs = (torch.from_numpy(random_model.data.peak_seq).unsqueeze(0).repeat(3, 1, 1, 1),
              torch.rand(3, spec.n_peaks, generator=g) * 3,
              torch.from_numpy(random_model.data.peak_dist).unsqueeze(0).repeat(3, 1),
              torch.rand(3, spec.n_tfs, generator=g) * 4, torch.randn(3, spec.n_covariates, generator=g))
    with torch.no_grad():
        assert torch.equal(got(*inputs), built(*inputs))
    # a second gene with other counts copies the same template: it must share no module, tensor or registry
    other_spec = replace(spec, n_tfs=spec.n_tfs + 3)
    other_state = {k: v.clone() for k, v in state.items()}
    other_state["fc.0.weight"] = torch.randn(spec.head_hidden, other_spec.head_in)
    other = from_state(other_spec, other_state)
    assert other.fc[0].in_features == other_spec.head_in and got.fc[0].in_features == spec.head_in
    mods_a, mods_b = set(map(id, got.modules())), set(map(id, other.modules()))
    assert not mods_a & mods_b
    assert not {p.data_ptr() for p in got.parameters()} & {p.data_ptr() for p in other.parameters()}
    other.fc[2].register_forward_hook(lambda *a: None)
    other.train()
    assert not got.fc[2]._forward_hooks and not got.training and not got.fc[2].training
    with pytest.raises(KeyError):
        from_state(spec, {k: v for k, v in state.items() if k != "fc.0.bias"})
