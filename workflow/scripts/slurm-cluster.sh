#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian/Ubuntu), for the tests and for trying
# the SLURM profile: munged, slurmctld and slurmd on localhost, partition `debug`, no accounting.
#
#   slurm-cluster.sh start    install slurm-wlm and munge if missing, configure, start, wait for the node
#   slurm-cluster.sh stop     stop the daemons this script started (by PID; munged last)
#   slurm-cluster.sh status   show the daemons and the node; exit 0 when up, 3 when not
#
# start and stop need root (they re-run themselves with sudo otherwise). State lives in
# /var/spool/slurm{ctld,d}, PID files in /run, logs in /var/log/slurm. Finished jobs stay visible to
# `squeue --states=all` for 10 minutes (MinJobAge=600): the SLURM profile checks job status with squeue.
# SLURM_CLUSTER_TIMEOUT (seconds, default 60) bounds the wait for the node to become idle.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by mapmerge workflow/scripts/slurm-cluster.sh"
MUNGE_KEY=/etc/munge/munge.key
DAEMONS=(munged slurmctld slurmd)  # in start order
declare -A PIDFILE=([munged]=/run/munge/munged.pid [slurmctld]=/run/slurmctld.pid [slurmd]=/run/slurmd.pid)
LOGS=/var/log/slurm
TIMEOUT=${SLURM_CLUSTER_TIMEOUT:-60}

die() { echo "slurm-cluster: $*" >&2; exit 1; }
say() { echo "slurm-cluster: $*"; }

# running PID: a live process (not a zombie) has this PID
running() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# alive PIDFILE: the PID in PIDFILE names a running process
alive() { [[ -s $1 ]] && running "$(cat "$1")"; }

node_state() { sinfo --noheader --Node --format=%T 2>/dev/null | head -n1; }

# apt_get ARGS...: apt-get quietly, its output shown only when it fails
apt_get() {
  local out
  out=$(DEBIAN_FRONTEND=noninteractive apt-get -q "$@" 2>&1) || { echo "$out" | tail -n 20 >&2; return 1; }
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
    && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get to install them"
  say "installing slurm-wlm and munge with apt-get"
  if ! apt-cache show slurm-wlm munge >/dev/null 2>&1; then
    apt_get update
  fi
  # a stale package list can name versions the mirror no longer has: update once and retry
  apt_get install -y slurm-wlm munge || { apt_get update && apt_get install -y slurm-wlm munge; } \
    || die "apt-get install slurm-wlm munge failed (output above)"
}

setup_munge() {
  install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 755 /run/munge
  if [[ ! -s $MUNGE_KEY ]]; then
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 400 "$MUNGE_KEY"
}

write_conf() {
  local host cpus mem_mib real_mib
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mib=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
  real_mib=$(( mem_mib * 95 / 100 ))
  if [[ -e $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to overwrite a real cluster's configuration"
  fi
  install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
  cat >"$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
MinJobAge=600
DefMemPerCPU=1000
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mib State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

log_tails() {
  local f
  for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" /var/log/munge/munged.log; do
    [[ -e $f ]] && { echo "--- tail of $f"; tail -n 20 "$f"; }
  done
  return 0
}

wait_for_node() {
  local state="" deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    state=$(node_state)
    case $state in
      idle | mixed | allocated | completing) say "node $(hostname -s) is $state"; return ;;
    esac
    sleep 1
  done
  log_tails >&2
  die "the node did not become idle within ${TIMEOUT}s (last state: '${state:-no answer from slurmctld}'); logs above"
}

start() {
  if alive "${PIDFILE[munged]}" && alive "${PIDFILE[slurmctld]}" && alive "${PIDFILE[slurmd]}"; then
    say "already running"
    wait_for_node
    return
  fi
  install_packages
  setup_munge
  alive "${PIDFILE[slurmctld]}" || write_conf
  if ! alive "${PIDFILE[munged]}"; then
    su -s /bin/sh munge -c /usr/sbin/munged || { log_tails >&2; die "munged did not start"; }
  fi
  munge -n | unmunge >/dev/null || { log_tails >&2; die "munge does not work (munge -n | unmunge failed)"; }
  alive "${PIDFILE[slurmctld]}" || /usr/sbin/slurmctld || { log_tails >&2; die "slurmctld did not start"; }
  alive "${PIDFILE[slurmd]}" || /usr/sbin/slurmd || { log_tails >&2; die "slurmd did not start"; }
  wait_for_node
  # a job group asks for the sum of its parallel jobs' threads: --cores caps it at this node's CPUs
  say "submit with: snakemake --workflow-profile workflow/profiles/slurm --cores $(nproc)"
}

# stop_daemon NAME: SIGTERM the PID in its PID file, wait up to 30 s for it to exit
stop_daemon() {
  local name=$1 pid i
  if ! alive "${PIDFILE[$name]}"; then
    say "$name is not running"
    return
  fi
  pid=$(cat "${PIDFILE[$name]}")
  kill "$pid"
  for ((i = 0; i < 300; i++)); do
    running "$pid" || { say "stopped $name ($pid)"; return; }
    sleep 0.1
  done
  die "$name ($pid) did not exit within 30 s of SIGTERM"
}

stop() {
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    stop_daemon "${DAEMONS[i]}"
  done
  # With our configuration in place but no slurmctld, every SLURM client call (scontrol, sinfo) retries
  # for about 9 s, and the SLURM executor plugin runs `scontrol show config` whenever snakemake starts:
  # 9 s more for every later snakemake job on this machine. Without a configuration they fail at once.
  if [[ -e $CONF ]] && grep -qxF "$MARK" "$CONF"; then
    mv "$CONF" "$CONF.stopped"
    say "moved $CONF aside ($CONF.stopped); start writes it again"
  fi
}

status() {
  local name up=0
  for name in "${DAEMONS[@]}"; do
    if alive "${PIDFILE[$name]}"; then
      say "$name running ($(cat "${PIDFILE[$name]}"))"
    else
      say "$name not running"
      up=3
    fi
  done
  if ((up == 0)); then
    sinfo --Node --long
  fi
  return "$up"
}

case ${1:-} in
  start | stop | status) ;;
  *) die "usage: $0 start|stop|status" ;;
esac
if [[ $1 != status ]] && ((EUID != 0)); then
  command -v sudo >/dev/null || die "$1 needs root, and there is no sudo"
  exec sudo -- "$0" "$@"
fi
"$1"
