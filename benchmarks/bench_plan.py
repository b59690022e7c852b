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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_storage import command, wide_atlas, written_bytes  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
CONFIGS = {
    "h5 float32": [],
    "h5 float16 gzip": ["--dtype", "float16", "--compression", "gzip"],
    "summary alone": ["--groupby", "celltype", "--summary", "{out}/summary.tsv", "--no-per-cell"],
    "h5ad, 1/4 of cells": ["--format", "h5ad", "--where", "celltype == 'B'"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=24)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/c2n-storage"))
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    built = wide_atlas(args, __file__)
    if built is None:
        return
    data, models = built
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
          f"plan (its default calibration) then the real run-many, per configuration")
    print(f"\n{'configuration':<22}{'what':<12}{'predicted':>14}{'real':>14}{'predicted/real':>16}")
    for name, plan, real, ratios in rows:
        for key, label, scale in (("seconds", "wall s", 1), ("cpu_seconds", "CPU s", 1),
                                  ("peak_memory_bytes", "RSS MiB", 2**20), ("output_bytes", "MB", 1e6)):
            print(f"{name:<22}{label:<12}{plan[key] / scale:>14.1f}{real[key] / scale:>14.1f}{ratios[key]:>16.2f}")
            name = ""
    print(f"\nworst factor between prediction and the real job: {worst:.2f}x")


if __name__ == "__main__":
    main()
