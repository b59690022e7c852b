#!/usr/bin/env bash
# The GPU check, in one go on a lent GPU machine (no network; python3 3.12 with torch): install the project
# with the wheels carried in .whl/, run the CUDA tests (pytest -m cuda), then the benchmarks with
# --device cuda, each step under its own time limit. A failing step is recorded and the next one runs.
# Everything goes to $OUT/gpu_check.log (and one log per step); a summary is printed at the end.
#
#   bash benchmarks/fetch_gpu_wheels.sh         # here, with network: the wheels into .whl/ (git-ignored)
#   bash benchmarks/gpu_check.sh                # there, from the repository root, .whl/ carried along
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh  # anywhere: the same steps on the CPU, tiny sizes
#
# With the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540).
# Environment: OUT (default ./gpu-check-out), PYTHON (default python3), GPU_CHECK_DRY (1: dry run),
# GPU_CHECK_BUDGET (seconds for all steps, default 450: a step gets at most what is left, and is skipped
# with less than 20 s), CELL2NET_FIXTURES (upstream fixtures, when the checkout has shared/ with them).
set -uo pipefail  # not -e: a failed step must not stop the others (each step's status is recorded)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
DRY=${GPU_CHECK_DRY:-0}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$REPO/gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET:-450}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: > "$LOG"
if [ "$DRY" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi
if [ -z "${CELL2NET_FIXTURES:-}" ] && [ -d "$REPO/shared/fixtures/upstream-0.13" ]; then
    export CELL2NET_FIXTURES=$REPO/shared/fixtures/upstream-0.13
fi
START=$SECONDS
SUMMARY=()
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT CMD...: run CMD under `timeout`, its output in $OUT/NAME.log and the main log
step() {
    local name=$1 limit=$2 left rc status t0=$SECONDS
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        SUMMARY+=("$(printf '%-18s %-22s' "$name" "SKIPPED (no time left)")")
        say "=== $name: skipped, ${left}s of the budget left"
        FAILED=1
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    cat "$OUT/$name.log" >> "$LOG"
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${limit}s"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    SUMMARY+=("$(printf '%-18s %-22s %5ss' "$name" "$status" $((SECONDS - t0)))")
    say "=== $name: $status in $((SECONDS - t0))s"
    return 0
}

environment() {
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PYTHON" - <<'EOF'
import platform, sys
import torch
print("python", sys.version.split()[0], platform.machine(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("cudnn.allow_tf32", torch.backends.cudnn.allow_tf32, "matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)
from importlib.metadata import PackageNotFoundError, version
for name in ("numpy", "pandas", "scipy", "h5py", "typer", "rich", "matplotlib", "pytest", "hypothesis", "setuptools"):
    try:
        print(name, version(name))
    except PackageNotFoundError:
        print(name, "MISSING")
EOF
}

install() {
    local wheels=("$REPO"/.whl/*.whl) pandas_major
    if [ ! -e "${wheels[0]}" ]; then
        echo "no wheels in $REPO/.whl: run benchmarks/fetch_gpu_wheels.sh on a machine with network and carry .whl"
        return 1
    fi
    # anndata 0.12 needs pandas < 3: the carried pandas only where the machine's is newer
    pandas_major=$("$PYTHON" -c "import pandas; print(pandas.__version__.split('.')[0])" 2>/dev/null || echo 0)
    if [ "$pandas_major" -lt 3 ]; then
        wheels=($(printf '%s\n' "${wheels[@]}" | grep -v '/pandas-'))
    fi
    rm -rf "$SITE"
    if [ "$DRY" = 1 ]; then
        # here the interpreter is not 3.12: install for 3.12 on x86-64 Linux, as the GPU machine would
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE/wheels" --python-version 3.12 \
            --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "${wheels[@]}" || return 1
    else
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE/wheels" "${wheels[@]}" || return 1
    fi
    # the project itself, without its dependencies (they are the machine's and the wheels')
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE/project" \
        "$REPO" || return 1
    ls "$SITE/wheels" "$SITE/project"
}

imports() {
    "$PYTHON" - <<'EOF'
from importlib.metadata import version
import captum, anndata, mudata, torch
import cell2net_attr
print("captum", version("captum"), "anndata", version("anndata"), "mudata", version("mudata"), "from",
      anndata.__file__.rsplit("/", 2)[0])
print("cell2net_attr", cell2net_attr.__version__, "from", cell2net_attr.__file__)
EOF
}

# the steps below that are functions run in a child bash under `timeout`: export them and what they read
export -f environment install imports
export REPO DRY PYTHON SITE

say "gpu_check: $(date -u +%FT%TZ) on $(hostname), device $DEVICE, dry run $DRY, budget ${BUDGET}s, log $LOG"
step environment 60 bash -c environment
step install 180 bash -c install
if [ "$DRY" = 1 ]; then
    # the packages are this machine's (PYTHON's); the wheels were only checked to install for 3.12
    export PYTHONPATH=$SITE/project${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$SITE/project:$SITE/wheels${PYTHONPATH:+:$PYTHONPATH}
fi
step imports 60 bash -c imports

if [ "$DRY" = 1 ]; then
    export CELL2NET_TEST_DEVICE=cpu
    SIZES_ENGINE=(--captum-cells 1 --fast-cells 40 --peaks 10 --tfs 20)
    SIZES_ATLAS=(--shape tutorial --cells 120 --genes 3 --runs 1 --repeats 1 --dir "$OUT/atlas")
    SIZES_MUT=(--cells 64 --peaks 20 --rounds 2 --ref-cells 4)
    SIZES_PEAKS=(--rounds 1 --cases peaks-5%-open,tfs-5%-open)
else
    SIZES_ENGINE=(--captum-cells 4 --fast-cells 20000)
    SIZES_ATLAS=(--shape tutorial --runs 2 --repeats 2 --dir /tmp/c2n-atlas)
    SIZES_MUT=(--cells 2000)
    SIZES_PEAKS=(--rounds 3)
fi
# the CUDA tests (skipped, with the reason, without a GPU); in a dry run, the CPU stands in for the GPU
step tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rs -m cuda tests/test_cuda.py
step bench_engine 150 "$PYTHON" benchmarks/bench_engine.py --device "$DEVICE" "${SIZES_ENGINE[@]}"
step bench_atlas 240 "$PYTHON" benchmarks/bench_atlas.py --device "$DEVICE" "${SIZES_ATLAS[@]}"
step bench_mutagenesis 120 "$PYTHON" benchmarks/bench_mutagenesis.py --device "$DEVICE" "${SIZES_MUT[@]}"
step bench_peaks 120 "$PYTHON" benchmarks/bench_peaks.py --device "$DEVICE" "${SIZES_PEAKS[@]}"

{
    echo
    echo "=============== gpu_check summary ($((SECONDS - START))s, device $DEVICE, dry run $DRY) ==============="
    printf '%s\n' "${SUMMARY[@]}"
    echo "--- tests:"
    grep -E "passed|failed|error|skipped|SKIPPED|FAILED|tf32|TF32" "$OUT/tests.log" 2>/dev/null | tail -n 15
    for bench in bench_engine bench_atlas bench_mutagenesis bench_peaks; do
        echo "--- $bench:"
        tail -n 14 "$OUT/$bench.log" 2>/dev/null
    done
    echo "full log: $LOG"
} | tee -a "$LOG"
exit $FAILED
