#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start.sh DIR started: cancel its jobs, "scontrol shutdown"
# (slurmctld and slurmd), then MUNGE. Only the processes named by the pid files in DIR are touched,
# and each is killed if it does not stop in time. Safe to run twice, or after a start that failed.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$(cd "$1" 2>/dev/null && pwd) || exit 0
export SLURM_CONF="$dir/slurm.conf"

pid_of() {  # the pid in pid file $1 if that process is still alive
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_gone() {  # wait_gone SECONDS PID...: true once none of the PIDs is alive
  local deadline=$((SECONDS + $1)) p alive
  shift
  while :; do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.1
  done
}

stop_pid() {  # stop_pid PIDFILE: TERM, then KILL
  local pid
  pid=$(pid_of "$1") || return 0
  kill -TERM "$pid" 2>/dev/null
  wait_gone 10 "$pid" || { kill -KILL "$pid" 2>/dev/null; wait_gone 5 "$pid"; }
}

ctld=$(pid_of "$dir/slurmctld.pid")
slurmd=$(pid_of "$dir/slurmd.pid")
if [ -n "$ctld" ] && [ -f "$SLURM_CONF" ]; then
  # the jobs first: their processes belong to this cluster
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    deadline=$((SECONDS + 20))
    while [ -n "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  fi
  timeout 10 scontrol shutdown >/dev/null 2>&1
  wait_gone 15 $ctld $slurmd
fi
stop_pid "$dir/slurmd.pid"
stop_pid "$dir/slurmctld.pid"

munged_pid=$(pid_of "$dir/munge/munged.pid")
if [ -n "$munged_pid" ]; then
  timeout 10 munged --stop --socket="$dir/munge/munge.socket" >/dev/null 2>&1
  wait_gone 5 "$munged_pid"
fi
stop_pid "$dir/munge/munged.pid"
exit 0
