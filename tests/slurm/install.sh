#!/usr/bin/env bash
# The SLURM and MUNGE commands that tests/test_slurm.py needs (Debian/Ubuntu packages slurmctld,
# slurmd, slurm-client and munge).
#
#   tests/slurm/install.sh           install them when missing (needs root and apt-get)
#   tests/slurm/install.sh --check   only check
#
# Does nothing when they are all there. Exit status 0 when they are there afterwards; otherwise 3,
# with the reason on stdout (the SLURM test is then skipped with that reason). Package scripts are
# not allowed to start system-wide slurm or munge services: the test starts its own daemons.
set -uo pipefail

packages="slurmctld slurmd slurm-client munge"
commands="sbatch squeue scontrol scancel sinfo slurmctld slurmd slurmstepd munged munge unmunge"
missing() {
  local c
  for c in $commands; do command -v "$c" >/dev/null 2>&1 || printf '%s ' "$c"; done
}
cannot() { echo "SLURM test cluster: $*"; exit 3; }

m=$(missing)
[ -z "$m" ] && exit 0
[ "$(id -u)" -eq 0 ] || cannot "missing ${m% }, and installing $packages needs root"
command -v apt-get >/dev/null 2>&1 || cannot "missing ${m% }, and there is no apt-get to install $packages"
[ "${1:-}" = --check ] && cannot "missing ${m% }: tests/slurm/install.sh (run by make test) installs $packages"

echo "SLURM test cluster: installing $packages"
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then  # no service may start while the packages are configured
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && made_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if apt-get update -qq >"$log" 2>&1 \
   && apt-get install -y -qq --no-install-recommends $packages >>"$log" 2>&1; then
  rc=0
else
  rc=$?
fi
[ "$made_policy" -eq 1 ] && rm -f "$policy"
if [ "$rc" -ne 0 ]; then
  tail -n 5 "$log"
  rm -f "$log"
  cannot "apt-get could not install $packages (exit $rc)"
fi
rm -f "$log"
m=$(missing)
[ -z "$m" ] || cannot "still missing ${m% } after installing $packages"
echo "SLURM test cluster: installed $packages"
