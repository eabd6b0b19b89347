#!/usr/bin/env bash
# Single-node Slurm cluster on this machine, for CI and for trying the
# Slurm profile locally.  No systemd: munged, slurmctld and slurmd are started
# directly as daemons.
#
#   bash .ci/slurm.sh start    install (if missing) and start; no-op if a cluster already answers
#   bash .ci/slurm.sh stop     stop only what `start` started, restore replaced config files
#   bash .ci/slurm.sh status   sinfo / squeue and what `start` recorded
#
# The cluster: one node named `hostname` (NodeAddr 127.0.0.1), CPUs = nproc,
# RealMemory a bit below `free -m`, fake GPUs (gres.conf: Name=gpu File=/dev/null...),
# or with SLURM_CI_NODES=N > 1, N nodes `hostname`-1 .. -N on this one host: one slurmd each,
# each with its own NodeName, Port (6818, 6819, ...) and %n spool, pid and log paths (so that a
# multi-node training can be tested; every node sees the same files),
# partition `debug` (Default=YES, MaxTime=INFINITE), no accounting (sacct does not work:
# use the executor's squeue status command), MinJobAge=3600 so squeue keeps reporting
# finished jobs for an hour.
#
# Environment knobs (all optional):
#   SLURM_CI_STATE   state/log/pid directory          [/var/spool/slurm-ci]
#   SLURM_CI_GPUS    number of fake GPUs on the node  [2]  (2 so that a devices=2 launch can be tested)
#   SLURM_CI_NODES   number of nodes (slurmd daemons) [1]
#   SLURM_CI_CPUS    CPUs to declare                  [nproc]
#   SLURM_CI_TIMEOUT seconds to wait for the node     [90]
#
# Must run as root (or with password-less sudo).  Works without a tty/stdin.
set -euo pipefail

STATE=${SLURM_CI_STATE:-/var/spool/slurm-ci}
MARKER="$STATE/started"          # one line per thing we started/changed: "<kind> <what> [<extra>]"
CONF_DIR=/etc/slurm
TAG="# managed-by: storylm .ci/slurm.sh (removed again by '.ci/slurm.sh stop')"
HOST=$(hostname)
TIMEOUT=${SLURM_CI_TIMEOUT:-90}
NODES=${SLURM_CI_NODES:-1}
# The node names: this host's name for one node, <host>-1 .. <host>-N for several.
node_names() {
    if [ "$NODES" -le 1 ]; then echo "$HOST"; else seq -f "$HOST-%g" 1 "$NODES"; fi
}

log() { printf '[slurm.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "needs root (or sudo)"
    SUDO="sudo -n"
fi

# sinfo answers (controller reachable)?
cluster_up() { timeout 10 sinfo -h >/dev/null 2>&1; }

node_state() { timeout 10 sinfo -h -n "${1:-$HOST}" -o '%t' 2>/dev/null | head -n1 | tr -d ' *'; }

record() { $SUDO mkdir -p "$STATE"; echo "$*" | $SUDO tee -a "$MARKER" >/dev/null; }

install_packages() {
    local missing=0 b
    for b in slurmctld slurmd munged sinfo sbatch squeue scontrol; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    log "installing slurmctld slurmd munge slurm-client (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local pkgs="slurmctld slurmd munge slurm-client"
    # shellcheck disable=SC2086
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs </dev/null; then
        $SUDO apt-get update -q </dev/null
        # shellcheck disable=SC2086
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs </dev/null
    fi
    record "installed $pkgs"
}

munge_ok() { timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munged already running (not started by us)"
        return 0
    fi
    $SUDO mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            $SUDO mungekey --create --keyfile=/etc/munge/munge.key
        else
            $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        record "file /etc/munge/munge.key"
    fi
    log "starting munged"
    local user=root
    if id munge >/dev/null 2>&1; then
        user=munge
        $SUDO chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    fi
    $SUDO chmod 0700 /etc/munge
    $SUDO chmod 0400 /etc/munge/munge.key
    $SUDO chmod 0755 /run/munge
    if [ "$user" = root ]; then
        $SUDO /usr/sbin/munged --force
    else
        $SUDO runuser -u munge -- /usr/sbin/munged --force
    fi
    local i
    for i in $(seq 1 50); do munge_ok && break; sleep 0.2; done
    munge_ok || die "munged did not come up (see /var/log/munge/munged.log)"
    record "daemon munged $(cat /run/munge/munged.pid)"
}

# Replace a config file, keeping a backup of a foreign one.
put_conf() {
    local path=$1 content=$2
    if [ -e "$path" ] && ! grep -qF "$TAG" "$path"; then
        local backup="$STATE/backup/$(basename "$path")"
        $SUDO mkdir -p "$STATE/backup"
        $SUDO cp -p "$path" "$backup"
        record "backup $path $backup"
        log "backed up existing $path to $backup"
    elif [ ! -e "$path" ]; then
        record "file $path"
    fi
    printf '%s\n' "$content" | $SUDO tee "$path" >/dev/null
}

write_conf() {
    local cpus mem gpus gres_lines="" i dev
    cpus=${SLURM_CI_CPUS:-$(nproc)}
    mem=$(free -m | awk '/^Mem:/ {print $2}')
    mem=$(( mem * 95 / 100 ))
    [ "$mem" -lt 500 ] && mem=500
    gpus=${SLURM_CI_GPUS:-2}
    # Fake GPUs: any existing file works as a device file (no cgroup device
    # constraint with task/none); distinct files give distinct GPU indices.
    local devs=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/ptmx /dev/console)
    [ "$gpus" -le "${#devs[@]}" ] || die "SLURM_CI_GPUS must be <= ${#devs[@]}"
    local node node_lines="" port=6818
    local node_gres=""
    [ "$gpus" -gt 0 ] && node_gres="Gres=gpu:$gpus"
    for node in $(node_names); do
        for ((i = 0; i < gpus; i++)); do
            dev=${devs[$i]}
            gres_lines+="NodeName=$node Name=gpu File=$dev"$'\n'
        done
        node_lines+="NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem $node_gres State=UNKNOWN"$'\n'
        port=$((port + 1))
    done

    $SUDO mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/log"
    put_conf "$CONF_DIR/slurm.conf" "$TAG
ClusterName=storylm-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# trust the numbers below instead of what slurmd detects (containers, VMs)
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay visible to squeue for an hour (the executor plugin's
# squeue status command needs MinJobAge >= 3 x its first status-check delay)
MinJobAge=3600
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=60
SlurmdTimeout=120
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
GresTypes=gpu
${node_lines}PartitionName=debug Nodes=$(node_names | paste -sd, -) Default=YES MaxTime=INFINITE State=UP"
    put_conf "$CONF_DIR/gres.conf" "$TAG
AutoDetect=off
${gres_lines}"
    # cgroup.conf is not needed (proctrack/linuxproc, task/none), but a
    # stale one referencing missing plugins would break slurmd: leave it alone.
    log "wrote $CONF_DIR/slurm.conf ($NODES node(s), each CPUs=$cpus RealMemory=$mem gpu=$gpus) and gres.conf"
}

start_daemon() {  # start_daemon <name> <pid file name> <args...>
    local name=$1 pidfile="$STATE/$2"; shift 2
    $SUDO rm -f "$pidfile"
    log "starting $name"
    if ! $SUDO "/usr/sbin/$name" "$@" </dev/null; then
        $SUDO tail -n 30 "$STATE/log/$name.log" >&2 || true
        die "$name failed to start"
    fi
    local i
    for i in $(seq 1 50); do [ -s "$pidfile" ] && break; sleep 0.2; done
    [ -s "$pidfile" ] || { $SUDO tail -n 30 "$STATE/log/$name.log" >&2 || true; die "$name wrote no pid file"; }
    record "daemon $name $(cat "$pidfile")"
}

wait_idle() {  # wait_idle [node]
    local node=${1:-$HOST} deadline=$((SECONDS + TIMEOUT)) st resumed=0
    while [ $SECONDS -lt $deadline ]; do
        st=$(node_state "$node" || true)
        case "$st" in
            idle|mix|alloc|comp) log "node $node is $st"; return 0 ;;
            down*|drain*|drng*|fail*|inval*)
                if [ $resumed -lt 3 ]; then
                    log "node $node is $st: scontrol update state=resume"
                    $SUDO scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
                    resumed=$((resumed + 1))
                fi ;;
        esac
        sleep 1
    done
    timeout 10 sinfo -R >&2 || true
    $SUDO tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd-$node.log" >&2 || true
    die "node $node did not become idle within ${TIMEOUT}s (state: ${st:-none})"
}

alive() {  # alive <pid> <name>
    [ -n "${1:-}" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm")" = "$2" ]
}

cmd_start() {
    install_packages
    if cluster_up; then
        local st
        st=$(node_state "$(node_names | head -n1)" || true)
        log "a Slurm cluster already answers (node $(node_names | head -n1): ${st:-not in this cluster}); nothing to start"
        if [ -f "$MARKER" ] && [ -n "$st" ]; then wait_idle "$(node_names | head -n1)"; fi
        timeout 10 sinfo || true
        return 0
    fi
    if [ -f "$MARKER" ]; then
        # left over from a crashed/killed run: clean what we can, then start fresh
        log "stale marker $MARKER found; cleaning up first"
        cmd_stop
    fi
    $SUDO mkdir -p "$STATE"
    start_munge
    write_conf
    # -i: ignore unreadable state left by an earlier, killed instance
    start_daemon slurmctld slurmctld.pid -i
    local i
    for i in $(seq 1 100); do cluster_up && break; sleep 0.3; done
    if ! cluster_up; then
        $SUDO tail -n 20 "$STATE/log/slurmctld.log" >&2 || true
        die "slurmctld does not answer"
    fi
    local node
    for node in $(node_names); do
        $SUDO mkdir -p "$STATE/slurmd/$node"
        start_daemon slurmd "slurmd-$node.pid" -N "$node"
    done
    for node in $(node_names); do wait_idle "$node"; done
    timeout 10 sinfo
}

stop_pid() {  # stop_pid <name> <pid>
    local name=$1 pid=$2 i
    if ! alive "$pid" "$name"; then
        log "$name ($pid) is not running"
        return 0
    fi
    log "stopping $name ($pid)"
    $SUDO kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 75); do alive "$pid" "$name" || return 0; sleep 0.2; done
    log "$name ($pid) ignored SIGTERM; sending SIGKILL"
    $SUDO kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
    if [ ! -f "$MARKER" ]; then
        log "nothing recorded in $MARKER: nothing to stop"
        return 0
    fi
    # cancel the jobs on our cluster so that no job step outlives slurmd
    if cluster_up && grep -q '^daemon slurmctld ' "$MARKER"; then
        local ids i
        ids=$(timeout 10 squeue -h -o %A -t PENDING,RUNNING,SUSPENDED,COMPLETING 2>/dev/null | tr '\n' ' ' || true)
        if [ -n "${ids// /}" ]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            $SUDO scancel $ids 2>/dev/null || true
            for i in $(seq 1 30); do
                [ -z "$(timeout 10 squeue -h -o %A -t PENDING,RUNNING,SUSPENDED,COMPLETING 2>/dev/null)" ] && break
                sleep 1
            done
        fi
    fi
    # stop daemons in reverse start order
    local kind what extra
    while read -r kind what extra; do
        [ "$kind" = daemon ] && stop_pid "$what" "$extra"
    done < <(tac "$MARKER")
    # config files: restore backups, remove files we created
    while read -r kind what extra; do
        case "$kind" in
            backup) $SUDO cp -p "$extra" "$what"; log "restored $what" ;;
            file) $SUDO rm -f "$what"; log "removed $what" ;;
        esac
    done < <(tac "$MARKER")
    # packages we installed stay installed (harmless, and slow to reinstall)
    $SUDO rm -rf "$STATE"
    log "stopped"
}

cmd_status() {
    if [ -f "$MARKER" ]; then
        log "started by .ci/slurm.sh (recorded in $MARKER):"
        sed 's/^/    /' "$MARKER" >&2
    else
        log "nothing recorded in $MARKER"
    fi
    if cluster_up; then
        sinfo
        squeue
    else
        log "no Slurm controller answers"
        return 1
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
