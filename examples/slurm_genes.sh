#!/usr/bin/env bash
# One SLURM array task per gene: attributions for every checkpoint listed in genes.txt.
#
#   ls models/*.pt > genes.txt
#   sbatch --array=1-$(wc -l < genes.txt)%50 examples/slurm_genes.sh genes.txt data.h5mu out/
#
#SBATCH --job-name=cell2net-attr
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%A_%a.log
set -euo pipefail
list=$1 data=$2 out=$3
ckpt=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$list")
gene=$(basename "$ckpt" .pt)
mkdir -p "$out"
if [ -e "$out/$gene.h5" ]; then echo "$gene: done already"; exit 0; fi
# --threads defaults to $SLURM_CPUS_PER_TASK; progress goes to the log as plain lines
cell2net-attr run "$ckpt" "$data" --covariates cov0,cov1 --out "$out/$gene.h5" --no-hdf5-locking
