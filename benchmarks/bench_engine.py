"""Engine benchmark: captum reference vs fast engine vs forward-only, on a realistic model.

A synthetic Cell2Net module with 100 peaks of 256 bp, 300 TFs and 2 covariates, IG with
n_steps=100 (gauss-legendre), all in one run. Each measurement runs in its own child
process so that its peak RSS is its own. Prints seconds per cell and the ratios. On a GPU the clock is
read after ``torch.cuda.synchronize``; the ``tf_attr`` API rows run on the CPU.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--captum-cells 4] [--fast-cells 2000]
                                      [--peaks 100] [--tfs 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace

import torch

from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.engines.base import IGParams
from cell2net_attr.engines.registry import make_engine
from cell2net_attr.synthetic import random_module

SPEC = ModelSpec(n_peaks=100, peak_len=256, n_tfs=300, n_covariates=2, n_filters=(64, 32, 32, 16),
                 n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)


def _set_sizes(n_peaks: int, n_tfs: int) -> None:
    """The model's peaks and TFs (``--peaks``, ``--tfs``; a child is told its parent's)."""
    global SPEC
    SPEC = replace(SPEC, n_peaks=n_peaks, n_tfs=n_tfs)


def _inputs(n_cells: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (SPEC.n_peaks, SPEC.peak_len), generator=g), 4).float()
    dist = torch.rand(SPEC.n_peaks, generator=g)
    acc = torch.poisson(torch.full((n_cells, SPEC.n_peaks), 0.5), generator=g)
    tf = torch.poisson(torch.full((n_cells, SPEC.n_tfs), 2.0), generator=g)
    cov = torch.randn(n_cells, SPEC.n_covariates, generator=g)
    return [t.to(device) for t in (seq, dist, acc, tf, cov)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(part: str, n_cells: int, batch: int, device_name: str) -> dict:
    """Run one part in this process; seconds per cell and this process's peak RSS."""
    device = torch.device(device_name)
    module = random_module(SPEC, seed=1).to(device)
    seq, dist, acc, tf, cov = _inputs(n_cells, device)
    target = "peaks" if part.endswith("_peaks") else "tfs"
    params = IGParams(n_steps=100, method="gausslegendre", target=target)
    repeats = 1 if part.startswith("captum") else 3  # the reference takes seconds per cell; one pass is plenty

    def run_batches(fn) -> float:
        """Best of ``repeats`` passes over all cells (the least disturbed by other load)."""
        fn(0, min(batch, n_cells))  # warm-up (allocations, kernels)
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for s in range(0, n_cells, batch):
                fn(s, min(s + batch, n_cells))
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    if part.startswith("tf_attr"):  # the notebook API end to end (data file, batching), at a batch size
        return measure_api(int(part[len("tf_attr"):]), n_cells)
    if part == "forward":  # what upstream's predict does: the whole module, per cell
        def fn(s, e):
            with torch.no_grad():
                b = e - s
                module(seq.expand(b, -1, -1, -1), acc[s:e], dist.expand(b, -1), tf[s:e], cov[s:e])
    elif part == "forward_shared":  # the same forward, sequence encoder hoisted out of the cell loop
        with torch.no_grad():
            embd = module.encode_sequences(seq.unsqueeze(0))

        def fn(s, e):
            with torch.no_grad():
                b = e - s
                peaks = module.encode_peaks(embd.expand(b, -1, -1), acc[s:e])
                module.fc(module.head_input(peaks, dist.expand(b, -1), tf[s:e], cov[s:e]))
    else:
        t_build = time.perf_counter()
        engine = make_engine(part.removesuffix("_peaks"), module, seq, dist, params)
        t_build = time.perf_counter() - t_build

        def fn(s, e):
            engine.attribute(acc[s:e], tf[s:e], cov[s:e])
    seconds = run_batches(fn)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"part": part, "cells": n_cells, "batch": batch, "seconds": seconds, "per_cell": seconds / n_cells,
            "peak_rss_mib": rss_mib, "peak_gpu_mib": gpu_mib}


def measure_api(batch_size: int, n_cells: int) -> dict:
    """``cell2net_attr.tf_attr(model, batch_size=...)`` over a per-gene data file of ``n_cells`` cells."""
    import tempfile
    from pathlib import Path

    import cell2net_attr
    from cell2net_attr.synthetic import GeneSpec, save_checkpoint, write_mudata

    with tempfile.TemporaryDirectory() as tmp:
        gene = GeneSpec("BENCH", SPEC.n_peaks, SPEC.n_tfs)
        write_mudata(Path(tmp) / "d.h5mu", [gene], n_cells, SPEC.n_tfs, SPEC.n_covariates, SPEC.peak_len, seed=2)
        save_checkpoint(random_module(SPEC, seed=1), Path(tmp) / "BENCH.pt")
        model = cell2net_attr.load_model(Path(tmp) / "BENCH.pt", Path(tmp) / "d.h5mu", covariates=["cov0", "cov1"],
                                         device="cpu")
        cell2net_attr.tf_attr(model, idx=list(range(8)), batch_size=batch_size)  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            cell2net_attr.tf_attr(model, batch_size=batch_size)
            best = min(best, time.perf_counter() - t0)
        model.close()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"part": f"tf_attr{batch_size}", "cells": n_cells, "batch": batch_size, "seconds": best,
            "per_cell": best / n_cells, "peak_rss_mib": rss_mib, "peak_gpu_mib": 0.0}


def child(part: str, n_cells: int, batch: int, device: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", part, str(n_cells), str(batch), device,
                          "--peaks", str(SPEC.n_peaks), "--tfs", str(SPEC.n_tfs)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--captum-cells", type=int, default=4)
    ap.add_argument("--fast-cells", type=int, default=2000)
    ap.add_argument("--peaks", type=int, default=SPEC.n_peaks, help="peaks of the model")
    ap.add_argument("--tfs", type=int, default=SPEC.n_tfs, help="TFs of the model")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_sizes(args.peaks, args.tfs)
    if args.child:
        part, n, b, dev = args.child
        print(json.dumps(measure(part, int(n), int(b), dev)))
        return
    print(f"model: {SPEC.n_peaks} peaks x {SPEC.peak_len} bp, {SPEC.n_tfs} TFs, {SPEC.n_covariates} covariates; "
          f"IG gausslegendre n_steps=100; device {args.device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}", flush=True)
    rows = [
        child("captum", args.captum_cells, 4, args.device),  # upstream's batch size
        child("fast", args.fast_cells, 256, args.device),
        child("forward", args.fast_cells, 256, args.device),
        child("forward_shared", args.fast_cells, 256, args.device),
        child("tf_attr4", args.fast_cells, 4, "cpu"),
        child("captum_peaks", args.captum_cells, 4, args.device),
        child("fast_peaks", max(args.fast_cells // 10, 8), 256, args.device),
        child("tf_attr256", args.fast_cells, 256, "cpu"),
    ]
    by = {r["part"]: r for r in rows}
    print(f"\n{'measurement':<34}{'cells':>7}{'s/cell':>12}{'cells/s':>11}{'peak RSS MiB':>14}"
          + (f"{'peak GPU MiB':>14}" if args.device != "cpu" else ""))
    labels = {"captum": "captum reference engine", "fast": "fast engine",
              "forward": "forward only (whole module)", "forward_shared": "forward only (seq encoder once)",
              "tf_attr4": "tf_attr API, batch_size=4", "tf_attr256": "tf_attr API, batch_size=256",
              "captum_peaks": "peaks: captum reference engine", "fast_peaks": "peaks: fast engine"}
    for r in rows:
        print(f"{labels[r['part']]:<34}{r['cells']:>7}{r['per_cell']:>12.3e}{1 / r['per_cell']:>11.1f}"
              f"{r['peak_rss_mib']:>14.0f}" + (f"{r['peak_gpu_mib']:>14.0f}" if args.device != "cpu" else ""))
    print(f"\nspeed-up fast vs captum reference, per cell: {by['captum']['per_cell'] / by['fast']['per_cell']:,.0f}x")
    print(f"fast engine time / forward-only (whole module): {by['fast']['per_cell'] / by['forward']['per_cell']:.4f}x")
    print(f"fast engine time / forward-only (seq encoder once): "
          f"{by['fast']['per_cell'] / by['forward_shared']['per_cell']:.2f}x")
    print(f"peaks: speed-up fast vs captum reference, per cell: "
          f"{by['captum_peaks']['per_cell'] / by['fast_peaks']['per_cell']:,.0f}x")
    print(f"tf_attr API, batch_size=4 / batch_size=256 (data file included): "
          f"{by['tf_attr4']['per_cell'] / by['tf_attr256']['per_cell']:.2f}x")


if __name__ == "__main__":
    main()
