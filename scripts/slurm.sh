#!/usr/bin/env bash
# Start a single-node Slurm cluster, idempotently, for `bench matrix --executor slurm` and its tests:
#   Debian's munge (a key, munged as the munge user) and slurm-wlm (slurmctld + slurmd as root, one node = this
#   machine's hostname with its CPUs and most of its memory, one partition `debug`). Installs the packages only
#   when missing; re-running when `sinfo` answers does nothing.
# On failure it prints one line saying why, records it in .cache/slurm.status (read by the tests, which then skip,
# or fail under CI=true) and exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."

STATUS_FILE=.cache/slurm.status
WAIT_S=${SERVICES_WAIT_S:-60}
CONF=/etc/slurm/slurm.conf
mkdir -p .cache

fail() {
    echo "slurm: $*" | tee "$STATUS_FILE" >&2
    exit 1
}

as_root() {  # run a command as root: directly, or through passwordless sudo
    if [ "$(id -u)" = 0 ]; then "$@"
    elif sudo -n true 2>/dev/null; then sudo -n "$@"
    else fail "need root (or passwordless sudo) to $*"; fi
}

wait_for() {  # wait_for WHAT LOG COMMAND...: poll COMMAND until it succeeds, at most WAIT_S seconds
    local what=$1 log=$2; shift 2
    for _ in $(seq $((WAIT_S * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    fail "$what did not answer within ${WAIT_S}s; last lines of $log: $(as_root tail -n 3 "$log" 2>/dev/null | tr '\n' ' ')"
}

munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
node_idle() { sinfo -h -N -o '%T' | grep -Eq '^(idle|mixed|allocated)'; }

# --- packages ---------------------------------------------------------------------------------------------
missing=()
command -v munged >/dev/null || missing+=(munge)
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
if [ ${#missing[@]} -gt 0 ]; then
    echo "slurm: installing ${missing[*]} (apt)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
fi

# --- munge ------------------------------------------------------------------------------------------------
if ! munge_ok 2>/dev/null; then
    as_root test -s /etc/munge/munge.key || as_root mungekey --create --keyfile /etc/munge/munge.key \
        || fail "cannot create /etc/munge/munge.key"
    as_root chown munge:munge /etc/munge/munge.key && as_root chmod 400 /etc/munge/munge.key
    as_root install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
    echo "slurm: starting munged (log: /var/log/munge/munged.log)" >&2
    as_root runuser -u munge -- /usr/sbin/munged || fail "munged did not start: $(as_root tail -n 2 /var/log/munge/munged.log | tr '\n' ' ')"
    wait_for munged /var/log/munge/munged.log munge_ok
fi

# --- slurm.conf: this machine as the one node -------------------------------------------------------------
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))  # leave 15% to the OS
conf=$(cat <<EOF
# written by vrbench scripts/slurm.sh: a single-node cluster for tests
ClusterName=vrbench
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=1
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=5
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ "$(as_root cat "$CONF" 2>/dev/null)" != "$conf" ]; then
    as_root mkdir -p /etc/slurm
    printf '%s\n' "$conf" | as_root tee "$CONF" >/dev/null
    changed=1  # running daemons read the old one: restart them
fi
as_root mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm

# --- daemons ----------------------------------------------------------------------------------------------
start() {  # start NAME: (re)start a slurm daemon as root, in the background
    if [ -n "${changed:-}" ] && as_root test -s "/run/$1.pid"; then
        as_root kill "$(as_root cat "/run/$1.pid")" 2>/dev/null && sleep 1
    fi
    if [ -n "${changed:-}" ] || ! as_root pgrep -x "$1" >/dev/null; then
        echo "slurm: starting $1 (log: /var/log/slurm/$1.log)" >&2
        as_root "$1" || fail "$1 did not start: $(as_root tail -n 2 "/var/log/slurm/$1.log" | tr '\n' ' ')"
    fi
}
if [ -n "${changed:-}" ] || ! node_idle 2>/dev/null; then
    start slurmctld
    wait_for slurmctld /var/log/slurm/slurmctld.log sinfo -h
    start slurmd
    as_root scontrol update nodename="$host" state=resume >/dev/null 2>&1  # a node left down by an old run
    wait_for "node $host idle" /var/log/slurm/slurmd.log node_idle
fi

echo "ok $(date -u +%FT%TZ)" >"$STATUS_FILE"
echo "slurm: node $host ($cpus CPUs, $mem_mb MB) is $(sinfo -h -N -o '%T'), partition $(sinfo -h -o '%P')" >&2
