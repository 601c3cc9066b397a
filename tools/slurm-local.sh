#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (slurmctld and slurmd on localhost, munge for authentication), for
# the tests of `probekit run SUITE --launcher slurm` (tests/test_suite_launchers.py). Needs root and apt; no
# systemd: the daemons are started directly. Idempotent: a cluster already up is left as it is.
#
#   bash tools/slurm-local.sh          # install (about a minute the first time) and start; prints `sinfo`
#   bash tools/slurm-local.sh stop     # stop the daemons it started
#
# Exits non-zero, saying why, when the cluster cannot be started (no root, no apt, a daemon that does not
# come up); the Slurm test then skips with that reason.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm

say() { echo "slurm-local: $*" >&2; }

stop() {
  for pidfile in /run/slurmctld.pid /run/slurmd.pid /run/munge/munged.pid; do
    if [[ -f "$pidfile" ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
  done
}

node_up() {
  command -v sinfo >/dev/null 2>&1 && sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"
}

install() {
  if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then return; fi
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get to install slurm-wlm and munge"; exit 1; }
  say "installing slurm-wlm and munge with apt"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null \
    || { say "apt-get install slurm-wlm munge failed"; exit 1; }
}

start_munge() {
  # A fresh key per machine: munge refuses a key that others can read.
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  if ! pgrep -u munge munged >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged --pid-file=/run/munge/munged.pid" \
      || runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  fi
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))  # MB, with room for the system
  mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS"
  cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by tools/slurm-local.sh: one node on localhost, no cgroups, no accounting.
ClusterName=probekit-local
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  if node_up; then say "already up"; sinfo; return; fi
  [[ $(id -u) == 0 ]] || { say "needs root (to install packages and start slurmctld, slurmd and munged)"; exit 1; }
  install
  start_munge
  write_conf
  pgrep -x slurmctld >/dev/null 2>&1 || slurmctld
  pgrep -x slurmd >/dev/null 2>&1 || slurmd
  for _ in $(seq 1 30); do
    if node_up; then sinfo; return; fi
    sleep 1
  done
  say "the node did not come up within 30 s; the end of $LOGS/slurmctld.log and slurmd.log:"
  tail -n 5 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
  exit 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) say "usage: $0 [start|stop]"; exit 2 ;;
esac
