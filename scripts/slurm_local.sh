#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the launcher's tests and for trying `python -m helper.launch
# --executor slurm` without a cluster: Debian's slurm-wlm and munge, run as root without systemd (munged,
# slurmctld and slurmd started directly), a generated slurm.conf (proctrack/linuxproc, task/none, no accounting
# storage: sacct has nothing to say), one partition "debug" holding this node with all its CPUs and memory.
#   bash scripts/slurm_local.sh start     install what is missing (apt), start, wait until the node is idle
#   bash scripts/slurm_local.sh stop      stop the daemons
#   bash scripts/slurm_local.sh status    sinfo
set -euo pipefail
ACTION=${1:-start}
CONF_DIR=/etc/slurm
STATE=/var/spool/slurm-local
NODE=$(hostname -s)

running() {  # a live process of that name (zombies left by a killed parent do not count)
    pgrep -r R,S,D -x "$1" >/dev/null
}

need_root() {
    if [ "$(id -u)" != 0 ]; then echo "error: scripts/slurm_local.sh needs root (it starts munged, slurmctld, slurmd)" >&2; exit 2; fi
}

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null)
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" /var/log/slurm /run/munge
    cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
KillWait=5
MinJobAge=3600
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    need_root
    install
    write_conf
    rm -f "$CONF_DIR/cgroup.conf"  # no cgroup.conf: slurmd autodetects, and task/none, proctrack/linuxproc use none
    if [ ! -s /etc/munge/munge.key ]; then mungekey --create >/dev/null 2>&1 || /usr/sbin/create-munge-key; fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    for _ in $(seq 60); do  # (re)start whichever daemon is not running, until the node is idle
        running munged || su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
        running slurmctld || slurmctld
        running slurmd || slurmd
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then sinfo; return; fi
        sleep 1
    done
    echo "error: the SLURM node did not become idle in 60 s; see /var/log/slurm/" >&2
    exit 1
}

stop() {
    need_root
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    for _ in $(seq 60); do
        running slurmd || running slurmctld || running munged || return 0
        sleep 0.5
    done
    pkill -9 -x slurmd || true; pkill -9 -x slurmctld || true; pkill -9 -x munged || true
}

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: bash scripts/slurm_local.sh start|stop|status" >&2; exit 2 ;;
esac
