#!/usr/bin/env bash
# Download, on a machine with network, the wheels that benchmarks/gpu_check.sh installs on a lent GPU machine
# (no network there; python3 is 3.12 with torch, h5py, typer, rich, pandas, numpy, scipy, matplotlib, but no
# captum, anndata or mudata). Into .whl/ at the repository root (git-ignored), for CPython 3.12 on x86-64
# Linux, one version of each: the versions this project is tested with.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # then carry .whl with the checkout (device tool: carry=[".whl"])
#
# PYTHON (default python3) runs pip; WHEEL_DIR (default .whl) is where the wheels go.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${WHEEL_DIR:-.whl}

# What the GPU machine lacks, and what those need that it lacks too (checked against its package list).
WHEELS=(
    captum==0.9.0
    anndata==0.12.19 array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0 scverse-misc==0.0.3
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
    mudata==0.3.10 session-info2==0.4.1
    # anndata 0.12 needs pandas < 3: gpu_check.sh installs this one only where the machine's pandas is 3 or later
    pandas==2.3.3
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done

mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"
# one version of each: an older wheel left in the folder would make the install refuse both
names=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr '[:upper:]' '[:lower:]' | sort)
if [ -n "$(echo "$names" | uniq -d)" ]; then
    echo "fetch_gpu_wheels: more than one version of: $(echo "$names" | uniq -d | tr '\n' ' ')in $DEST" >&2
    exit 1
fi
echo "fetch_gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST"
