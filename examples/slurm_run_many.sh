#!/usr/bin/env bash
# Every gene of models/ against one .h5mu, spread over a SLURM job array: each array task takes its
# contiguous share of the genes (derived from SLURM_ARRAY_TASK_*), and genes already done are skipped,
# so resubmitting the same array after a failure or preemption only computes what is missing.
#
#   sbatch --array=0-49 examples/slurm_run_many.sh models/ data.h5mu attr/ --covariates cov0,cov1
#
#SBATCH --job-name=c2n-genes
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=c2n-genes-%A_%a.log
set -euo pipefail
models=$1 data=$2 out=$3
shift 3
# --threads defaults to $SLURM_CPUS_PER_TASK; progress goes to the log as plain lines
exec cell2net-attr run-many "$models" "$data" --out-dir "$out" --no-hdf5-locking "$@"
