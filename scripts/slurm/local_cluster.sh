#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests marked `slurm` (and for trying
# the sbatch script and the submitit launcher without a cluster).
#
#   scripts/slurm/local_cluster.sh start   install what is missing (Debian: munge, slurmctld, slurmd,
#                                          slurm-client), write slurm.conf under the state dir, start
#                                          munged, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm/local_cluster.sh stop    stop exactly the daemons `start` started (by their pid files)
#   scripts/slurm/local_cluster.sh env     print `export SLURM_CONF=...` (eval "$(... env)")
#
# Needs root (the daemons, and apt-get when packages are missing). One partition `debug` with
# this host's CPUs, JobRequeue=1, munge authentication. State, logs and pid files live in
# $MOBILENET_SLURM_DIR (default /tmp/mobilenet-train-slurm); clients find the cluster through
# SLURM_CONF=$MOBILENET_SLURM_DIR/slurm.conf.
set -euo pipefail

STATE=${MOBILENET_SLURM_DIR:-/tmp/mobilenet-train-slurm}
CONF=$STATE/slurm.conf
export SLURM_CONF=$CONF

say() { echo "local_cluster: $*" >&2; }

install_missing() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get to install them"; exit 1; }
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/munge"
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm/local_cluster.sh: a one-node cluster for tests.
ClusterName=mobilenet-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
SlurmctldPort=${MOBILENET_SLURMCTLD_PORT:-6817}
SlurmdPort=${MOBILENET_SLURMD_PORT:-6818}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    mv "$CONF.tmp" "$CONF"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [[ $(id -u) == 0 ]] || { say "must run as root (it starts munged, slurmctld and slurmd)"; exit 1; }
    install_missing
    write_config
    if ! alive "$STATE/munged.pid"; then
        chown -R munge:munge "$STATE/munge"
        # Our own munged on our own socket: an existing system munged is left alone.
        runuser -u munge -- munged --socket="$STATE/munge/munge.socket" --pid-file="$STATE/munge/munged.pid" \
            --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed" --force
        for _ in $(seq 50); do [[ -f $STATE/munge/munged.pid ]] && break; sleep 0.1; done
        cp "$STATE/munge/munged.pid" "$STATE/munged.pid"
    fi
    alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$STATE/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            say "up: $(sinfo -h -o '%P %D nodes %c cpus %t' | head -1); export SLURM_CONF=$CONF"
            return 0
        fi
        # A node left down/drained by an earlier run comes back.
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        sleep 1
    done
    say "the node did not become idle within 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
    exit 1
}

stop() {
    local name pidfile pid
    for name in slurmd slurmctld munged; do
        pidfile=$STATE/$name.pid
        if alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            say "stopped $name ($pid)"
        fi
        rm -f "$pidfile"
    done
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
