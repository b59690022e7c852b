"""Scale benchmark: cells/s and peak RSS of `cell2net-attr run` on 10k, 100k and 1M cells.

    python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--dir /tmp/c2n-scale]

Data come from benchmarks/make_scale_data.py (generated on first use). Each size runs the real
command line in its own process (fast engine, n_steps 100, HDF5 output); peak RSS is that
process's own (os.wait4). Memory should stay flat as cells grow: cells are read and written in
batches and chunks, never whole.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_once(ck: Path, data: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `run`."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cell2net_attr", "run", str(ck), str(data), "--covariates", "cov0,cov1",
           "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed on {data}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/c2n-scale"))
    args = ap.parse_args()
    subprocess.run([sys.executable, str(HERE / "make_scale_data.py"), str(args.dir), *map(str, args.sizes)],
                   check=True)
    ck = args.dir / "SCALE.pt"
    print(f"model: 20 peaks x 256 bp, 50 TFs, 2 covariates; fast engine, gausslegendre n_steps=100, "
          f"batch 256, HDF5 output; {os.cpu_count()} CPUs")
    print(f"{'cells':>10}{'data MiB':>10}{'seconds':>10}{'cells/s':>10}{'peak RSS MiB':>14}")
    for n in args.sizes:
        data = args.dir / f"cells_{n}.h5mu"
        seconds, rss = run_once(ck, data, args.dir / f"attr_{n}.h5")
        print(f"{n:>10}{data.stat().st_size / 2**20:>10.0f}{seconds:>10.1f}{n / seconds:>10.0f}{rss:>14.0f}",
              flush=True)


if __name__ == "__main__":
    main()
