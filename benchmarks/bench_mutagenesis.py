"""Mutagenesis benchmark: the structured engine against upstream's way (one full forward per mutant).

One 256-bp peak of a 100-peak model with upstream's default architecture (filters 64, 32, 32, 16,
kernel 5, 16 dimensions, one attention block), 100 TFs and 2 covariates, over 2,000 cells:

* ISM: the structured engine's reference rates and all 768 single-base mutants, against upstream's
  ``saturation_mutagenesis`` cost of 769 ``predict`` passes over every cell. The reference engine
  (the plain forward, as upstream's ``predict``) is timed on a few passes of a few cells and scaled:
  its cost is linear in cells x passes.
* variants: 100 single-base changes spread over 10 peaks, every cell: predictions per second of both.

The reference is timed before and after the structured runs (best of the two), in the same process, so
the ratios are measured under the same load.

    python benchmarks/bench_mutagenesis.py [--device cpu|cuda] [--cells 2000] [--peaks 100] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from cell2net_attr.engines.ism_effect import ism_effect, upstream_mutants
from cell2net_attr.engines.mutagenesis import MutagenesisEngine
from cell2net_attr.engines.predict import PredictEngine
from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import random_module


def _spec(n_peaks: int) -> ModelSpec:
    return ModelSpec(n_peaks=n_peaks, peak_len=256, n_tfs=100, n_covariates=2, n_filters=(64, 32, 32, 16),
                     n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)


def _inputs(spec: ModelSpec, n_cells: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (spec.n_peaks, spec.peak_len), generator=g), 4).float()
    dist = torch.rand(spec.n_peaks, generator=g)
    acc = torch.poisson(torch.full((n_cells, spec.n_peaks), 0.5), generator=g)
    tf = torch.poisson(torch.full((n_cells, spec.n_tfs), 2.0), generator=g)
    cov = torch.randn(n_cells, spec.n_covariates, generator=g)
    return [t.to(device) for t in (seq, dist, acc, tf, cov)]


def _timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def reference_cost(engine: PredictEngine, cells, n_cells: int, passes: int, device) -> float:
    """Seconds per cell-prediction of the plain forward: ``passes`` mutants over ``n_cells`` cells."""
    acc, tf, cov = (t[:n_cells] for t in cells)
    engine.mutant_rates(0, [0], [1], acc[:2], tf[:2], cov[:2])  # warm-up
    seconds, _ = _timed(lambda: engine.mutant_rates(0, list(range(passes)), [1] * passes, acc, tf, cov), device)
    return seconds / (n_cells * passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--peaks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ref-cells", type=int, default=None, help="cells per timed reference pass")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = _spec(args.peaks)
    module = random_module(spec, seed=1).to(device)
    seq, dist, acc, tf, cov = _inputs(spec, args.cells, device)
    cells = (acc, tf, cov)
    ref_cells = args.ref_cells or (32 if device.type == "cpu" else min(args.cells, 512))
    print(f"model: {args.peaks} peaks x 256 bp, 100 TFs, 2 covariates, 1 attention block; {args.cells} cells; "
          f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")

    reference = PredictEngine(module, seq, dist)
    ref_a = reference_cost(reference, cells, ref_cells, 2, device)

    peak = args.peaks // 2
    setup, engine = _timed(lambda: MutagenesisEngine(module, seq, dist), device)
    pos, bases = upstream_mutants(seq[peak].cpu().numpy())

    def ism():
        ref = engine.reference_rates(acc, tf, cov).double().sum()
        alt = engine.mutant_rates(peak, pos, bases, acc, tf, cov).double().sum(0)
        return ism_effect(float(ref), alt.cpu().numpy(), args.cells, seq[peak].cpu().numpy())

    engine.mutant_rates(peak, pos[:8], bases[:8], acc[:64], tf[:64], cov[:64])  # warm-up
    ism_s, effects = _timed(ism, device)
    assert effects.shape == (4, 256) and np.isfinite(effects).all()

    rng = np.random.default_rng(0)
    var_peaks = rng.choice(args.peaks, 10, replace=False)
    variants = [(int(p), rng.choice(256, 10, replace=False), rng.integers(0, 4, 10)) for p in var_peaks]

    def variant_rates():
        return [engine.mutant_rates(p, vp, vb, acc, tf, cov) for p, vp, vb in variants]

    var_s, _ = _timed(variant_rates, device)
    ref_b = reference_cost(reference, cells, ref_cells, 2, device)
    per_pred = min(ref_a, ref_b)

    upstream_s = per_pred * args.cells * (len(pos) + 1)
    n_var = sum(len(vp) for _, vp, _ in variants)
    print(f"reference engine (plain forward): {per_pred * 1e3:.3f} ms per cell-prediction "
          f"(passes of {ref_cells} cells; {ref_a * 1e3:.3f} before, {ref_b * 1e3:.3f} after)")
    print(f"ISM of one peak ({len(pos)} mutants + reference, {args.cells} cells):")
    print(f"  upstream's way, scaled: {upstream_s:10.1f} s")
    print(f"  structured engine:      {ism_s:10.3f} s  (+ {setup:.3f} s engine set-up per gene)")
    print(f"  ratio:                  {upstream_s / ism_s:10.0f} x  ({upstream_s / (ism_s + setup):.0f} x with set-up)")
    print(f"variants ({n_var} over {len(variants)} peaks, {args.cells} cells):")
    print(f"  structured engine:      {n_var * args.cells / var_s:12.0f} variant-cell predictions/s ({var_s:.3f} s)")
    print(f"  reference engine:       {1 / per_pred:12.0f} variant-cell predictions/s")
    print(f"  ratio:                  {n_var * args.cells / var_s * per_pred:12.0f} x")


if __name__ == "__main__":
    main()
