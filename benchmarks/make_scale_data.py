"""Synthetic full .h5mu files for the scale benchmark: one gene model, N cells.

    python benchmarks/make_scale_data.py OUT_DIR 10000 100000 1000000

Writes OUT_DIR/cells_<N>.h5mu (upstream 0.13 layout, sparse counts) and one checkpoint
OUT_DIR/SCALE.pt (20 peaks, 50 TFs, 2 covariates) valid for all of them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import GeneSpec, random_module, save_checkpoint, write_mudata

GENE = GeneSpec("SCALE", n_peaks=20, n_tfs=50)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(n_peaks=GENE.n_peaks, peak_len=256, n_tfs=GENE.n_tfs, n_covariates=2,
                     n_filters=(64, 32, 32, 16), n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)
    save_checkpoint(random_module(spec, seed=5), out / "SCALE.pt")
    for n in map(int, sys.argv[2:]):
        path = out / f"cells_{n}.h5mu"
        if path.exists():
            continue
        t0 = time.perf_counter()
        # the same seed: every file holds the same gene, TFs and peaks, only the cell count differs
        write_mudata(path, [GENE], n_cells=n, n_tfs_total=GENE.n_tfs, n_covariates=2, seed=9)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr)


if __name__ == "__main__":
    main()
