#!/usr/bin/env bash
# One large gene split over a SLURM job array by cells, then merged.
#
#   mkdir -p out
#   jid=$(sbatch --parsable --array=0-7 examples/slurm_array.sh run GENE.pt data.h5mu out/GENE.h5 --covariates cov0,cov1)
#   sbatch --dependency=afterok:$jid examples/slurm_array.sh merge out/GENE.h5
#
# Each array task computes its contiguous share of the cells into out/GENE-0000K-of-0000N.h5
# (K and N come from SLURM_ARRAY_TASK_*: 0-based, 1-based and stepped arrays all work). The merge
# step checks that every shard is present, complete and from the same run before writing out/GENE.h5.
# A preempted task (scancel --signal=TERM --full, a time limit) saves its finished chunks and exits 143;
# resubmit it without --array as `run ... --shard K/N --resume` (K from 0), then the merge again.
#
#SBATCH --job-name=c2n-shards
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=c2n-shards-%A_%a.log
set -euo pipefail
mode=$1
shift
case "$mode" in
  run)
    ckpt=$1 data=$2 out=$3
    shift 3
    exec cell2net-attr run "$ckpt" "$data" --out "$out" --no-hdf5-locking "$@"
    ;;
  merge)
    out=$1
    shopt -s nullglob
    shards=("${out%.*}"-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]."${out##*.}")
    exec cell2net-attr merge "${shards[@]}" --out "$out"
    ;;
  *)
    echo "usage: $0 run CKPT DATA OUT [run options] | $0 merge OUT" >&2
    exit 2
    ;;
esac
