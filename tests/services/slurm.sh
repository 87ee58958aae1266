#!/usr/bin/env bash
# A single-node Slurm cluster on 127.0.0.1 for the Slurm executor's tests (tests/test_sweep_slurm.py).
#
#   tests/services/slurm.sh start   # prints "export SLURM_CONF=..." on success; eval it
#   tests/services/slurm.sh stop
#   tests/services/slurm.sh status
#
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge). Everything lives in
# $FTBENCH_SLURM_DIR (default /tmp/ftbench-slurm): its own munge key and socket, slurm.conf, state,
# logs and pid files; nothing under /etc is touched. The node gets this machine's real CPU count and
# memory (slurmd -C). Ports: $FTBENCH_SLURM_PORT (slurmctld, default 6817) and the next (slurmd).
# Exit code 3 when Slurm cannot start here, with the reason on stderr.
set -euo pipefail

DIR="${FTBENCH_SLURM_DIR:-/tmp/ftbench-slurm}"
PORT="${FTBENCH_SLURM_PORT:-6817}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

die() { echo "slurm.sh: $*" >&2; exit 3; }

stop() {
    for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
        if [ -f "$f" ]; then
            pid="$(cat "$f")"
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$f"
        fi
    done
}

up() { [ -f "$CONF" ] && scontrol ping 2>/dev/null | grep -q "is UP" && sinfo -h -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc)"; }

start() {
    for b in munged munge slurmctld slurmd sbatch squeue scontrol sinfo; do
        command -v "$b" >/dev/null || die "$b not found (apt-get install -y slurm-wlm munge)"
    done
    if up; then echo "export SLURM_CONF=$CONF"; return 0; fi
    stop
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
    chmod 700 "$DIR/munge"
    # Our own munge daemon: key and socket in $DIR, so the system's munge (if any) is left alone.
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$DIR/munge/munge.key"
    local force=""
    [ "$(id -u)" = 0 ] && force="--force"  # munged refuses root without it
    munged $force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.sock" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || die "munged did not start (see $DIR/munged.log)"
    for _ in $(seq 50); do [ -S "$DIR/munge/munge.sock" ] && break; sleep 0.1; done
    munge -S "$DIR/munge/munge.sock" -n | unmunge -S "$DIR/munge/munge.sock" >/dev/null \
        || die "munge does not work (see $DIR/munged.log)"

    local host user node cpus mem
    host="$(hostname -s)"
    user="$(id -un)"
    node="$(slurmd -C | head -1)"  # NodeName=... CPUs=... RealMemory=... as slurmd sees this machine
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")"
    mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")"
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read the node's CPUs/memory from 'slurmd -C'"
    cat > "$CONF" <<CONF
# Written by tests/services/slurm.sh: one node, this machine, on 127.0.0.1.
ClusterName=ftbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
# cred_expire: how long a requeued (preempted) job waits before it starts again (default 120 s)
AuthInfo=socket=$DIR/munge/munge.sock,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/slurmctld.log)"
    slurmd -f "$CONF" || die "slurmd did not start (see $DIR/slurmd.log)"
    for _ in $(seq 100); do
        if up; then echo "export SLURM_CONF=$CONF"; return 0; fi
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        sleep 0.2
    done
    die "the node did not come up: $(sinfo -h -o '%t %E' 2>&1 | head -1) (see $DIR/slurmctld.log, $DIR/slurmd.log)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if up; then sinfo; else echo "not running"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
