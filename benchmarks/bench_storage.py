"""Atlas-scale outputs: bytes and speed of each way to store a `run-many` job, on the wide atlas.

On the atlas of `bench_atlas.py` (its `build`), runs the real command line, in its own process, once per
variant and round, the variants interleaved within each round (the machine is shared: ratios of one run
count, absolute figures move):

* per-cell files: float32 (the baseline), float16, float16 + gzip, float16 + lzf, float32 + gzip;
* per-cell files (float32) with `--groupby celltype --summary` beside them;
* `--summary` alone (`--no-per-cell`).

For each: wall seconds (best of the rounds), peak RSS, the bytes written (per-cell files, or the table), and,
for the per-cell variants, the seconds `summarize OUT --data DATA --groupby celltype` takes to read them back
into the same table.

    python benchmarks/bench_storage.py [--cells 20000] [--genes 24] [--rounds 2] [--dir /tmp/c2n-storage]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_atlas import LAYOUT, SHAPES, build  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
VARIANTS = {
    "float32": [],
    "float16": ["--dtype", "float16"],
    "float16 + gzip": ["--dtype", "float16", "--compression", "gzip"],
    "float16 + lzf": ["--dtype", "float16", "--compression", "lzf"],
    "float32 + gzip": ["--compression", "gzip"],
    "float32 + summary": ["--groupby", "celltype", "--summary", "{out}/summary.tsv"],
    "summary alone": ["--groupby", "celltype", "--summary", "{out}/summary.tsv", "--no-per-cell"],
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
    """Bytes of the job's products in ``out`` (the report and hidden sidecars left out)."""
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.startswith(("run-report", ".")))


def wide_atlas(args, script: str) -> tuple[Path, Path] | None:
    """The wide atlas of ``args.cells`` x ``args.genes`` under ``args.dir``, built by a child process of
    ``script`` (its memory is not lent to the runs); None in that child (``--build-only``)."""
    root = args.dir / f"{args.cells}x{args.genes}-{LAYOUT}"
    if args.build_only:
        build(root, replace(SHAPES["wide"], cells=args.cells, genes=args.genes))
        return None
    subprocess.run([sys.executable, script, "--build-only", "--cells", str(args.cells), "--genes", str(args.genes),
                    "--dir", str(args.dir)], check=True)
    return root / "atlas.h5mu", root / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/c2n-storage"))
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    built = wide_atlas(args, __file__)
    if built is None:
        return
    data, models = built
    results: dict[str, dict] = {name: {"seconds": [], "rss": 0.0} for name in VARIANTS}
    for _ in range(args.rounds):
        for name, extra in VARIANTS.items():
            out = args.dir / ("out-" + name.replace(" ", "").replace("+", "-"))
            shutil.rmtree(out, ignore_errors=True)
            seconds, _, rss, _ = command("run-many", str(models), str(data), "--out-dir", str(out), "--covariates",
                                         "cov0,cov1", "--device", "cpu", "--quiet", *[e.format(out=out) for e in extra])
            results[name]["seconds"].append(seconds)
            results[name]["rss"] = max(results[name]["rss"], rss / 2**20)
            results[name]["bytes"] = written_bytes(out)
            if "--no-per-cell" not in extra and "--summary" not in extra:
                read = command("summarize", str(out), "--data", str(data), "--groupby", "celltype", "-q",
                               "--out", str(out / "summary.tsv"))[0]
                results[name].setdefault("summarize", []).append(read)
                os.unlink(out / "summary.tsv")
    base = results["float32"]
    print(f"atlas: {args.cells} cells, {args.genes} genes (100 peaks, 80-200 TFs), {os.cpu_count()} CPUs; "
          f"best of {args.rounds} interleaved rounds")
    print(f"\n{'run-many':<20}{'bytes':>14}{'vs float32':>12}{'seconds':>10}{'vs float32':>12}{'peak RSS MiB':>14}"
          f"{'summarize s':>13}")
    for name, r in results.items():
        read = f"{min(r['summarize']):.1f}" if "summarize" in r else "-"
        print(f"{name:<20}{r['bytes']:>14,}{r['bytes'] / base['bytes']:>12.3f}{min(r['seconds']):>10.1f}"
              f"{min(r['seconds']) / min(base['seconds']):>12.2f}{r['rss']:>14.0f}{read:>13}")


if __name__ == "__main__":
    main()
