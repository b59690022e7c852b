"""The fast engines' peak encoder equals the module's own ``encode_peaks``, in value and in gradient."""

from __future__ import annotations

import pytest
import torch

from cell2net_attr.engines.peak_encoder import PeakEncoder, merge_tables
from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import random_module


def _module(n_peaks: int, n_dims: int, blocks: int, seed: int):
    spec = ModelSpec(n_peaks=n_peaks, peak_len=32, n_tfs=5, n_covariates=1, n_filters=(8, 8), n_channels=4,
                     kernel_size=3, n_dims=n_dims, n_attn_blocks=blocks)
    module = random_module(spec, seed)
    for p in module.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (1, n_peaks, 32), generator=g), 4).float()
    with torch.no_grad():
        embd = module.encode_sequences(seq)
    # counts with many zeros, continuous values as along an IG path, negatives and large values
    acc = torch.cat([torch.poisson(torch.full((12, n_peaks), 0.7), generator=g),
                     5 * torch.rand(6, n_peaks, generator=g), 20 * torch.randn(3, n_peaks, generator=g)])
    return module, embd, acc


@pytest.mark.parametrize("n_peaks,n_dims,blocks", [(1, 8, 1), (3, 8, 2), (20, 16, 1), (40, 32, 2)])
@pytest.mark.parametrize("path", ["exp2", "sdpa"])
def test_encoder_equals_encode_peaks(n_peaks, n_dims, blocks, path):
    module, embd, acc = _module(n_peaks, n_dims, blocks, seed=n_peaks + n_dims)
    enc = PeakEncoder(module, embd, block_size=7)  # blocks that do not divide the cells
    for block in enc.blocks:
        block.use_exp2 = path == "exp2"
    ref_in = acc.clone().requires_grad_(True)
    ref = module.encode_peaks(embd.expand(len(acc), -1, -1), ref_in)
    got_in = acc.clone().requires_grad_(True)
    got = enc(got_in)
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 1e-5 * scale
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * weights).sum().backward()
    (got * weights).sum().backward()
    assert (got_in.grad - ref_in.grad).abs().max() <= 1e-4 * ref_in.grad.abs().max()


def test_merge_tables_are_the_merge_layers():
    """Between breakpoints the two merge layers are exactly the table's line (float64)."""
    g = torch.Generator().manual_seed(0)
    s, w = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)
    w[2] = 0.0  # a unit that never switches
    w2, b2 = torch.randn(3, 9, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    breaks, table = merge_tables(s, w, w2, b2)
    a = torch.linspace(-6, 6, 301, dtype=torch.float64)
    for p in range(4):
        k = torch.searchsorted(breaks[p], a)
        line = table[p, k, :3] + a[:, None] * table[p, k, 3:]
        direct = torch.relu(s[p] + a[:, None] * w) @ w2.T + b2
        assert torch.allclose(line, direct, atol=1e-12)
