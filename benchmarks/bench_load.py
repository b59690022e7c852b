"""`run-many` beside a competing load: what a shared node or a busy laptop does to the thread pool.

Runs the real command line on a synthetic atlas, alone and then beside ``--load`` busy processes (each
spinning on numpy products on one core), with this version's default threads, with ``--threads 1``, and
with the OpenMP runtime's own spin-waiting (``OMP_WAIT_POLICY=ACTIVE``, what the previous release left in
place); with ``--baseline DIR`` (an older checkout) also that checkout's command beside the same load.
Prints seconds and the slowdown of each against the same command alone, measured in one run.

    python benchmarks/bench_load.py [--cells 10000] [--genes 12] [--load 2] [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cell2net_attr.synthetic import GeneSpec, make_gene_models

BUSY = "import numpy as np\na = np.random.rand(300, 300)\nwhile True:\n    a = a @ a\n    a /= a.max()\n"


def build(root: Path, n_cells: int, n_genes: int) -> tuple[Path, Path]:
    """A full .h5mu and its checkpoints (upstream's architecture, 100 peaks, 150 TFs)."""
    genes = [GeneSpec(f"G{i:02d}", 100, 150) for i in range(n_genes)]
    data, _ = make_gene_models(root, genes, n_cells=n_cells, n_tfs_total=300, n_covariates=2, seed=1)
    return data, root / "models"


def run_many(code: Path, data: Path, models: Path, out: Path, extra: list[str], env: dict) -> float:
    """Seconds of one `run-many` from checkout ``code`` (its own process)."""
    cmd = [sys.executable, "-m", "cell2net_attr", "run-many", str(models), str(data), "--out-dir", str(out),
           "--covariates", "cov0,cov1", "--overwrite", "-q", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**env, "PYTHONPATH": str(code)}, cwd=out.parent)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--genes", type=int, default=12)
    parser.add_argument("--load", type=int, default=2, help="busy processes beside the job")
    parser.add_argument("--baseline", type=Path, help="an older checkout, run beside the same load")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    data, models = build(root, args.cells, args.genes)
    out = root / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    cases = [("this version, default threads", here, [], env),
             ("this version, --threads 1", here, ["--threads", "1"], env),
             ("this version, OpenMP spinning (OMP_WAIT_POLICY=ACTIVE)", here, [], {**env, "OMP_WAIT_POLICY": "ACTIVE"})]
    if args.baseline:
        cases.append(("previous release, default threads", args.baseline, [], env))
    alone = {name: run_many(code, data, models, out, extra, e) for name, code, extra, e in cases}
    busy = [subprocess.Popen([sys.executable, "-c", BUSY], env={**env, "OMP_NUM_THREADS": "1"})
            for _ in range(args.load)]
    try:
        time.sleep(1.0)
        loaded = {name: run_many(code, data, models, out, extra, e) for name, code, extra, e in cases}
    finally:
        for p in busy:
            p.kill()
    print(f"run-many, {args.genes} genes x {args.cells} cells, {os.cpu_count()} CPUs, {args.load} busy processes beside:")
    print(f"{'case':<58} {'alone s':>8} {'loaded s':>9} {'slowdown':>9}")
    for name in alone:
        print(f"{name:<58} {alone[name]:8.1f} {loaded[name]:9.1f} {loaded[name] / alone[name]:8.2f}x")


if __name__ == "__main__":
    main()
