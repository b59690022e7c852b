"""Peak attributions (and TF attributions) of this tree against a baseline checkout, side by side in one run.

The model is upstream's architecture: 100 peaks of 256 bp, n_filters (64, 32, 32, 16), kernel 5, 16 dims,
1 attention block, 100 TFs, 2 covariates; IG gausslegendre with n_steps 100. Two kinds of cells:

* single-cell-like: 5% of the peaks open, small integer counts;
* metacell-like: 50% of the peaks open, counts like a sum over cells.

Each case runs in a fresh pair of worker processes, one per side (the baseline's with the baseline
checkout first on its path), both built from the same seeds; the measurements alternate between the two,
round after round (the machine is shared: only ratios measured side by side count), and the best of the
rounds is kept. Fresh workers per case, because what a process ran before changes the next case's
memory allocator state (a run that freed hundreds of MB leaves the heap grown, and later allocations then
take no page faults). Prints milliseconds per cell (CPU time of the worker and wall time) and the ratios,
and checks that both sides give the same attributions. Without ``--baseline``, this tree alone. With
``--device cuda`` everything runs on the GPU, synchronised before each clock reading (the wall time is the
one that counts there).

    python benchmarks/bench_peaks.py [--baseline /tmp/base-peaks] [--rounds 5] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> (target, open fraction, multiply_by_inputs, cells)
CASES = {
    "peaks-5%-open": ("peaks", 0.05, True, 48),
    "peaks-50%-open": ("peaks", 0.5, True, 24),
    "peaks-5%-open-no-mbi": ("peaks", 0.05, False, 12),  # --no-multiply-by-inputs: every peak's gradient
    "tfs-5%-open": ("tfs", 0.05, True, 6000),
    "tfs-50%-open": ("tfs", 0.5, True, 6000),
}


def _inputs(spec, n_cells: int, frac: float, seed: int = 0):
    """Peak sequences and distances, and per-cell accessibility with ``frac`` of the peaks open."""
    import torch

    g = torch.Generator().manual_seed(seed)
    p = spec.n_peaks
    seq = torch.nn.functional.one_hot(torch.randint(0, 4, (p, spec.peak_len), generator=g), 4).float()
    dist = torch.rand(p, generator=g)
    is_open = torch.rand(n_cells, p, generator=g) < frac
    mean = 6.0 if frac > 0.2 else 0.5  # metacells sum many cells' counts; a single cell has a few reads
    acc = (1 + torch.poisson(torch.full((n_cells, p), mean), generator=g)) * is_open
    tf = torch.poisson(torch.full((n_cells, spec.n_tfs), 2.0), generator=g)
    cov = torch.randn(n_cells, spec.n_covariates, generator=g)
    return seq, dist, acc, tf, cov


def worker(out_dir: str, threads: int, device_name: str = "cpu") -> None:
    """Serve measurements on stdin/stdout: one case name per line, one JSON line back."""
    import torch

    import cell2net_attr
    from cell2net_attr.engines.base import IGParams
    from cell2net_attr.engines.registry import make_engine
    from cell2net_attr.model.architecture import ModelSpec
    from cell2net_attr.synthetic import random_module

    if threads:
        torch.set_num_threads(threads)
    spec = ModelSpec(n_peaks=100, peak_len=256, n_tfs=100, n_covariates=2, n_filters=(64, 32, 32, 16),
                     n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)
    device = torch.device(device_name)
    module = random_module(spec, seed=1).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print(json.dumps({"package": str(Path(cell2net_attr.__file__).parent), "threads": torch.get_num_threads()}),
          flush=True)
    built = {}
    for line in sys.stdin:
        name = line.strip()
        target, frac, mbi, n = CASES[name]
        if name not in built:
            seq, dist, acc, tf, cov = (t.to(device) for t in _inputs(spec, n, frac))
            params = IGParams(n_steps=100, method="gausslegendre", multiply_by_inputs=mbi, target=target)
            engine = make_engine("fast", module, seq, dist, params)
            engine.attribute(acc[:4], tf[:4], cov[:4])  # warm-up
            built[name] = (engine, acc, tf, cov)
        engine, acc, tf, cov = built[name]
        sync()
        cpu, wall = time.process_time(), time.perf_counter()
        attr = engine.attribute(acc, tf, cov)[0]
        sync()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        attr = attr.cpu()
        path = Path(out_dir) / f"case{list(CASES).index(name)}.pt"
        if not path.exists():
            torch.save(attr, path)
        print(json.dumps({"cpu": cpu / n, "wall": wall / n, "attr": str(path)}), flush=True)


class _Side:
    """A worker process for one checkout."""

    def __init__(self, root: Path, threads: int, device: str) -> None:
        self.out = tempfile.mkdtemp(prefix="bench-peaks-")
        env = dict(os.environ, PYTHONPATH=str(root))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", self.out, str(threads), device], cwd=root,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def measure(self, name: str) -> dict:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="a checkout of the previous release (without: this tree alone)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return
    import torch

    roots = {"this": Path(__file__).resolve().parents[1]}
    if args.baseline is not None:
        roots = {"baseline": args.baseline.resolve(), **roots}
    cases = [c for c in args.cases.split(",") if c]
    best: dict[tuple[str, str], dict] = {}
    for i, case in enumerate(cases):
        sides = {name: _Side(root, args.threads, args.device) for name, root in roots.items()}
        if i == 0:
            for name, side in sides.items():
                print(f"{name}: {side.info['package']} ({side.info['threads']} threads)", flush=True)
        for _ in range(args.rounds):
            for name, side in sides.items():
                r = side.measure(case)
                b = best.setdefault((case, name), {"cpu": float("inf"), "wall": float("inf"), "attr": r["attr"]})
                b["cpu"], b["wall"] = min(b["cpu"], r["cpu"]), min(b["wall"], r["wall"])
        for side in sides.values():
            side.close()
    if args.baseline is None:
        print(f"\n{'case':<24}{'cells':>6}{'ms/cell (cpu)':>15}{'ms/cell (wall)':>16}   device {args.device}")
        for case in cases:
            r = best[(case, "this")]
            print(f"{case:<24}{CASES[case][3]:>6}{r['cpu'] * 1e3:>15.3f}{r['wall'] * 1e3:>16.3f}")
        return
    print(f"\n{'case':<24}{'cells':>6}{'baseline ms/cell':>18}{'this ms/cell':>14}{'ratio cpu':>11}{'ratio wall':>12}"
          f"{'max diff':>10}")
    for case in cases:
        old, new = best[(case, "baseline")], best[(case, "this")]
        a_old, a_new = torch.load(old["attr"]), torch.load(new["attr"])
        diff = float((a_new - a_old).abs().max() / a_old.abs().max().clamp_min(1e-30))
        print(f"{case:<24}{CASES[case][3]:>6}{old['cpu'] * 1e3:>11.3f} cpu{new['cpu'] * 1e3:>10.3f} cpu"
              f"{old['cpu'] / new['cpu']:>10.2f}x{old['wall'] / new['wall']:>11.2f}x{diff:>10.1e}")
        print(f"{'':<30}{old['wall'] * 1e3:>11.3f} wall{new['wall'] * 1e3:>9.3f} wall")
    print("\nratio = baseline time / this time (best of the rounds); max diff = max |this - baseline| / max |baseline|")


if __name__ == "__main__":
    main()
