#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on loopback, for the tests.
#
#   tests/slurm/start.sh DIR      # then: export SLURM_CONF=DIR/slurm.conf
#   tests/slurm/stop.sh DIR
#
# Everything lives in DIR: slurm.conf, a MUNGE daemon with its own key and socket, the controller's
# state, the node's spool, logs and pid files. One node, "localhost" at 127.0.0.1, with this
# machine's CPUs and memory (at least 2 CPUs and 8 GB: what examples/slurm_array.sh asks for; the
# node is taken to have what slurm.conf says, SlurmdParameters=config_overrides). Jobs may share the
# CPUs (OverSubscribe=FORCE), so that the tests' workflows run side by side on a small machine.
# slurmctld and slurmd listen on 127.0.0.1 (see below), on two free ports chosen here. munged runs
# with --force: pytest's temporary directories are private (0700), which munged would otherwise
# refuse for its socket; every client here is root anyway. When the cluster is up, the node is
# idle and SLURM_CONF=DIR/slurm.conf is printed. If anything fails, what was started is stopped
# again (stop.sh) and the logs are shown. Needs root (the daemons and the jobs run as root) and the
# Debian packages slurmctld, slurmd, slurm-client and munge (tests/slurm/install.sh).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)
timeout_s=${SLURM_TEST_START_TIMEOUT:-60}

for exe in munged munge slurmctld slurmd scontrol sinfo; do
  command -v "$exe" >/dev/null || { echo "start.sh: $exe not found (run tests/slurm/install.sh)" >&2; exit 3; }
done
[ "$(id -u)" -eq 0 ] || { echo "start.sh: the test cluster runs its daemons and jobs as root" >&2; exit 3; }

started=0
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "$started" -eq 1 ]; then
    echo "start.sh: the cluster did not come up (exit $rc); logs in $dir/log:" >&2
    tail -n 20 "$dir"/log/*.log >&2 2>/dev/null || true
    "$here/stop.sh" "$dir" >&2 || true
  fi
}
trap on_exit EXIT

free_port() {  # a TCP port on 127.0.0.1 that nothing listens on, not in "$@"
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    case " $* " in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "start.sh: no free port found" >&2
  return 1
}

wait_for() {  # wait_for WHAT COMMAND...: poll until COMMAND succeeds, at most $timeout_s seconds
  local what=$1 deadline=$((SECONDS + timeout_s))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "start.sh: timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 0700 "$dir/state" "$dir/spool"
chmod 0755 "$dir/munge"
cpus=$(nproc)
[ "$cpus" -ge 2 ] || cpus=2
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
[ "$mem_mb" -ge 8192 ] || mem_mb=8192
ctld_port=$(free_port)
slurmd_port=$(free_port "$ctld_port")
user=$(id -un)

# Where the daemons listen. With CommunicationParameters=NoCtldInAddrAny,NoInAddrAny, slurmctld and
# slurmd bind to the address that their host name resolves to instead of all addresses: 127.0.0.1
# where the host name resolves to it. Elsewhere they run under the host name "localhost" in a UTS
# namespace of their own (unshare, as root), and where that is not possible either they listen on
# all addresses (clients and jobs still use 127.0.0.1 only).
loopback_name() { getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 {found = ($1 ~ /^127\./)} END {exit !found}'; }
run_daemon=()
comm="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
if loopback_name "$(hostname)"; then
  :
elif loopback_name localhost && unshare --uts sh -c 'hostname localhost' >/dev/null 2>&1; then
  run_daemon=(unshare --uts sh -c 'hostname localhost && exec "$0" "$@"')
else
  comm="# CommunicationParameters: $(hostname) does not resolve to 127.0.0.1, so the daemons listen on all addresses"
  echo "start.sh: note: $(hostname) does not resolve to a loopback address and unshare is not possible: slurmctld and slurmd listen on all addresses" >&2
fi

cat > "$dir/slurm.conf" <<CONF
# Written by tests/slurm/start.sh: a single-node test cluster on loopback.
ClusterName=c2ntest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
$comm
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
CONF

started=1
# MUNGE with its own key and socket
head -c 1024 /dev/urandom > "$dir/munge/munge.key"
chmod 0400 "$dir/munge/munge.key"
munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
  --origin=127.0.0.1 --force
wait_for "munged" bash -c "munge -n -S '$dir/munge/munge.socket' | unmunge -S '$dir/munge/munge.socket'"

export SLURM_CONF="$dir/slurm.conf"
"${run_daemon[@]}" slurmctld -f "$SLURM_CONF"
wait_for "slurmctld" scontrol ping
"${run_daemon[@]}" slurmd -f "$SLURM_CONF" -N localhost
node_idle() { [ "$(sinfo -h -n localhost -o %t)" = idle ]; }
wait_for "the node to be idle" node_idle
echo "SLURM_CONF=$SLURM_CONF"
