"""`plan` against the real job, on the wide atlas of `bench_atlas.py`: how far its prediction lands.

For each configuration, `cell2net-attr plan ... --json` and then the real `cell2net-attr run-many ...` with
the same options, each in its own process, one after the other (the machine is shared: the calibration and
the job meet the same load only when they run back to back). Prints, per configuration, predicted and real
wall seconds, CPU seconds, peak RSS and bytes written, and their ratios (predicted / real), and the worst
ratio over all.

    python benchmarks/bench_plan.py [--cells 20000] [--genes 24] [--dir /tmp/c2n-storage]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_atlas import LAYOUT, SHAPES, build  # noqa: E402
from dataclasses import replace  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
CONFIGS = {
    "h5 float32": [],
    "h5 float16 gzip": ["--dtype", "float16", "--compression", "gzip"],
    "summary alone": ["--groupby", "celltype", "--summary", "{out}/summary.tsv", "--no-per-cell"],
    "h5ad, 1/4 of cells": ["--format", "h5ad", "--where", "celltype == 'B'"],
}


def command(*args: str) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds, peak RSS (bytes) and stdout of `cell2net-attr ARGS` in its own process."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cell2net_attr", *args], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: cell2net-attr {' '.join(args)}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024.0, out


def written_bytes(out: Path) -> int:
    """Bytes of the job's products (the report and hidden sidecars left out)."""
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.startswith(("run-report", ".")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=24)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/c2n-storage"))
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.dir / f"{args.cells}x{args.genes}-{LAYOUT}"
    if args.build_only:
        build(root, replace(SHAPES["wide"], cells=args.cells, genes=args.genes))
        return
    subprocess.run([sys.executable, __file__, "--build-only", "--cells", str(args.cells), "--genes", str(args.genes),
                    "--dir", str(args.dir)], check=True)
    data, models = root / "atlas.h5mu", root / "models"
    common = [str(models), str(data), "--covariates", "cov0,cov1", "--device", "cpu", "--quiet"]
    rows, worst = [], 1.0
    for name, extra in CONFIGS.items():
        out = args.dir / "out-plan"
        shutil.rmtree(out, ignore_errors=True)
        extra = [e.format(out=out) for e in extra]
        plan = json.loads(command("plan", *common, *extra, "--json")[3])
        seconds, cpu, rss, _ = command("run-many", *common, "--out-dir", str(out), *extra)
        real = {"seconds": seconds, "cpu_seconds": cpu, "peak_memory_bytes": rss, "output_bytes": written_bytes(out)}
        ratios = {k: plan[k] / real[k] for k in real}
        worst = max(worst, *(max(r, 1 / r) for r in ratios.values()))
        rows.append((name, plan, real, ratios))
    print(f"atlas: {args.cells} cells, {args.genes} genes (100 peaks, 80-200 TFs), {os.cpu_count()} CPUs; "
          f"plan (default calibration: 256 cells of 2 genes) then the real run-many, per configuration")
    print(f"\n{'configuration':<22}{'what':<12}{'predicted':>14}{'real':>14}{'predicted/real':>16}")
    for name, plan, real, ratios in rows:
        for key, label, scale in (("seconds", "wall s", 1), ("cpu_seconds", "CPU s", 1),
                                  ("peak_memory_bytes", "RSS MiB", 2**20), ("output_bytes", "MB", 1e6)):
            print(f"{name:<22}{label:<12}{plan[key] / scale:>14.1f}{real[key] / scale:>14.1f}{ratios[key]:>16.2f}")
            name = ""
    print(f"\nworst factor between prediction and the real job: {worst:.2f}x")


if __name__ == "__main__":
    main()
