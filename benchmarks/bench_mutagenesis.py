"""Mutagenesis benchmark: the structured engine against upstream's way (one full forward per mutant).

One 256-bp peak of a 100-peak model with upstream's default architecture (filters 64, 32, 32, 16,
kernel 5, 16 dimensions, one attention block), 100 TFs and 2 covariates, over 2,000 cells:

* ISM: the structured engine's reference rates and all 768 single-base mutants, reduced to the (4, L)
  effect, against upstream's ``saturation_mutagenesis`` cost of 769 ``predict`` passes over every cell.
  The reference engine (the plain forward, as upstream's ``predict``) is timed on passes over a few
  cells and scaled: its cost is linear in cells x passes.
* variants: 100 single-base changes spread over 10 peaks, every cell: predictions per second of both.

The reference passes are interleaved with the structured work (one after each block of cells, one
after each peak of variants) so that both are measured under the same load; wall and CPU seconds
(this process) are both reported, the CPU ratio being the steadier one on a shared machine.

    python benchmarks/bench_mutagenesis.py [--device cpu|cuda] [--cells 2000] [--peaks 100] [--threads N]
                                           [--ref-cells 8] [--rounds 8]
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


class Clock:
    """Wall and CPU seconds of the calls it times (CPU: this process, all threads; less disturbed by other
    processes on a shared machine)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall, self.cpu = device, 0.0, 0.0

    def __call__(self, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--peaks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ref-cells", type=int, default=None, help="cells of each timed reference pass")
    parser.add_argument("--rounds", type=int, default=8, help="structured blocks of cells, each followed by "
                        "one reference pass")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = _spec(args.peaks)
    module = random_module(spec, seed=1).to(device)
    seq, dist, acc, tf, cov = _inputs(spec, args.cells, device)
    ref_cells = args.ref_cells or (8 if device.type == "cpu" else min(args.cells, 512))
    print(f"model: {args.peaks} peaks x 256 bp, 100 TFs, 2 covariates, 1 attention block; {args.cells} cells; "
          f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"the structured engine {'1' if device.type == 'cpu' else 'n/a'}), "
          f"torch {torch.__version__}")

    reference = PredictEngine(module, seq, dist)
    setup = Clock(device)
    engine = setup(lambda: MutagenesisEngine(module, seq, dist))
    peak = args.peaks // 2
    pos, bases = upstream_mutants(seq[peak].cpu().numpy())
    reference.mutant_rates(0, [0], [1], acc[:2], tf[:2], cov[:2])  # warm-up both
    engine.mutant_rates(peak, pos[:8], bases[:8], acc[:16], tf[:16], cov[:16])

    # ISM, interleaved: a block of cells by the structured engine, then one reference pass
    ism, ref = Clock(device), Clock(device)
    ref_sum, alt_sums = 0.0, torch.zeros(len(pos), dtype=torch.float64, device=device)
    for part in torch.arange(args.cells, device=device).tensor_split(args.rounds):
        a, t, c = acc[part], tf[part], cov[part]
        ref_sum += ism(lambda: engine.reference_rates(a, t, c).double().sum())
        alt_sums += ism(lambda: engine.mutant_rates(peak, pos, bases, a, t, c).double().sum(0))
        ref(lambda: reference.mutant_rates(0, [0], [1], acc[:ref_cells], tf[:ref_cells], cov[:ref_cells]))
    effects = ism_effect(float(ref_sum), alt_sums.cpu().numpy(), args.cells, seq[peak].cpu().numpy())
    assert effects.shape == (4, 256) and np.isfinite(effects).all()

    rng = np.random.default_rng(0)
    variants = [(int(p), rng.choice(256, 10, replace=False), rng.integers(0, 4, 10))
                for p in rng.choice(args.peaks, 10, replace=False)]
    var = Clock(device)
    for p, vp, vb in variants:
        var(lambda: engine.mutant_rates(p, vp, vb, acc, tf, cov))
        ref(lambda: reference.mutant_rates(0, [0], [1], acc[:ref_cells], tf[:ref_cells], cov[:ref_cells]))

    n_ref = ref_cells * (args.rounds + len(variants))  # cell-predictions the reference made
    n_var = sum(len(vp) for _, vp, _ in variants) * args.cells
    passes = len(pos) + 1  # upstream's predict calls for one peak
    print(f"reference engine (plain forward): {ref.wall / n_ref * 1e3:.2f} ms wall, {ref.cpu / n_ref * 1e3:.2f} ms "
          f"CPU per cell-prediction ({n_ref} cell-predictions in passes of {ref_cells} cells, interleaved)")
    print(f"ISM of one peak ({len(pos)} mutants + reference, {args.cells} cells):     wall          CPU")
    up_wall, up_cpu = ref.wall / n_ref * args.cells * passes, ref.cpu / n_ref * args.cells * passes
    print(f"  upstream's way (769 passes), scaled: {up_wall:12.1f} s {up_cpu:12.1f} s")
    print(f"  structured engine:                   {ism.wall:12.3f} s {ism.cpu:12.3f} s  "
          f"(+ {setup.wall:.3f} s set-up per gene)")
    print(f"  ratio:                               {up_wall / ism.wall:12.0f} x {up_cpu / ism.cpu:12.0f} x")
    print(f"variants ({n_var // args.cells} over {len(variants)} peaks, {args.cells} cells), "
          f"variant-cell predictions per second:")
    print(f"  structured engine:                   {n_var / var.wall:12.0f}   {n_var / var.cpu:12.0f}")
    print(f"  reference engine:                    {n_ref / ref.wall:12.1f}   {n_ref / ref.cpu:12.1f}")
    print(f"  ratio:                               {n_var / var.wall * ref.wall / n_ref:12.0f} x "
          f"{n_var / var.cpu * ref.cpu / n_ref:12.0f} x")


if __name__ == "__main__":
    main()
