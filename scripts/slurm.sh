#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for the SLURM launcher tests and for trying sweeps.
#
#   bash scripts/slurm.sh install   # Debian's slurmctld slurmd slurm-client munge (needs root, apt)
#   bash scripts/slurm.sh up        # install if needed, then munged + slurmctld + slurmd; waits until the node is idle
#   bash scripts/slurm.sh down      # cancel every job, wait for them, stop the daemons (by pid file)
#   bash scripts/slurm.sh status    # exit 0 when the cluster answers
#   eval "$(bash scripts/slurm.sh env)"   # SLURM_CONF and the sacct stand-in for this shell
#
# (`make slurm-up` / `make slurm-down` call this.) Nothing under /etc is touched: every command and
# daemon reads SLURM_CONF, and all state lives in $DATAFLEX_SLURM_DIR (default /tmp/dataflex-slurm).
# The recipe and its pitfalls are measured in ENVIRONMENT.md:
#  - munge: socket directory 0755, key 0600, --origin=127.0.0.1 (no host lookups);
#  - no DNS: the controller and the node are both 127.0.0.1; slurmctld only runs on the host named in
#    SlurmctldHost, so that name is this machine's short hostname (`hostname -s`), with its address
#    given explicitly, and the node has a fixed name (slurmd -N);
#  - no accounting daemon, so the real `sacct` fails and submitit would wait forever on a job that
#    ends without a result: a stand-in on PATH answers from `squeue`, and MinJobAge keeps finished
#    jobs in squeue for a day;
#  - latency: immediate scheduling, short credential expiry (requeued jobs start again in seconds),
#    KillWait=5 (submitit ignores SIGTERM).
set -euo pipefail

STATE=${DATAFLEX_SLURM_DIR:-/tmp/dataflex-slurm}
NODE=${DATAFLEX_SLURM_NODE:-dataflex}
CTLD_PORT=${DATAFLEX_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CONF=$STATE/slurm.conf
MUNGE_SOCKET=$STATE/munge/munge.socket.2
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "[slurm] $*" >&2; }
die() { echo "[slurm] error: $*" >&2; exit 1; }

export SLURM_CONF=$CONF
export PATH=$STATE/bin:$PATH

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; }

cmd_install() {
    installed && return 0
    [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing it needs root (apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it (Debian packages: ${PACKAGES[*]})"
    say "installing ${PACKAGES[*]} (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
        || die "apt-get could not install ${PACKAGES[*]}"
    installed || die "installed ${PACKAGES[*]} but slurmctld/slurmd/sbatch/munged are still not on PATH"
}

# Every query is bounded: a controller that is not there makes scontrol retry for MessageTimeout.
ctld_up() { timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"; }
cmd_status() { [ -f "$CONF" ] && ctld_up && timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -qE "idle|mixed|allocated|completing"; }

write_sacct_standin() {
    mkdir -p "$STATE/bin"
    # `sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]`, answered from squeue (all states).
    cat > "$STATE/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct stand-in for a cluster without an accounting daemon (scripts/slurm.sh): answers the
# JobID|State|NodeList query submitit makes, from squeue (finished jobs stay there MinJobAge seconds).
ids=()
while [ $# -gt 0 ]; do
    case "$1" in
        -j|--jobs) ids+=("$2"); shift 2 ;;
        -j*) ids+=("${1#-j}"); shift ;;
        --jobs=*) ids+=("${1#--jobs=}"); shift ;;
        *) shift ;;
    esac
done
echo "JobID|State|NodeList"
for id in ${ids[@]+"${ids[@]}"}; do
    for one in ${id//,/ }; do
        squeue -h -r -t all -j "$one" -o '%i|%T|%N' 2>/dev/null || true
    done
done
EOF
    chmod 755 "$STATE/bin/sacct"
}

write_conf() {
    local hw host
    hw=$(slurmd -C | head -1)
    hw=${hw#NodeName=* }  # the hardware line (CPUs, sockets, cores, RealMemory) without its NodeName
    host=$(hostname -s)
    cat > "$CONF" <<EOF
# Written by scripts/slurm.sh: a one-node cluster on localhost (state in $STATE).
ClusterName=dataflex
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
MinJobAge=86400
KillWait=5
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=1
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1; then return 0; fi
    mkdir -p "$STATE/munge"
    chmod 755 "$STATE" "$STATE/munge"
    if [ ! -s "$STATE/munge/munge.key" ]; then
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$STATE/munge/munge.key"
    munged --force --origin=127.0.0.1 --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed" \
        || die "munged did not start (see $STATE/log/munged.log)"
}

cmd_up() {
    cmd_install
    if cmd_status; then say "already up (SLURM_CONF=$CONF)"; return 0; fi
    mkdir -p "$STATE"/{ctld,slurmd,log}
    write_conf
    write_sacct_standin
    start_munge
    pid_alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF" || die "slurmctld did not start (see $STATE/log/slurmctld.log)"
    pid_alive "$STATE/slurmd.pid" || slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start (see $STATE/log/slurmd.log)"
    local deadline=$((SECONDS + 30))
    while [ $SECONDS -lt $deadline ]; do
        if cmd_status; then
            say "up: node $NODE ($(sinfo -h -n "$NODE" -o '%c CPUs, %m MB')); in your shell: eval \"\$(bash scripts/slurm.sh env)\""
            return 0
        fi
        # a node left DOWN by an earlier unclean stop comes back with an explicit resume
        timeout 5 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        sleep 0.3
    done
    die "the cluster did not come up in 30 s (logs in $STATE/log)"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # stop_pid PIDFILE NAME: TERM, wait up to 10 s, then KILL
    local file=$1 name=$2 pid
    pid_alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }; sleep 0.2; done
    say "$name (pid $pid) ignored SIGTERM; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
}

cmd_down() {
    if [ -f "$CONF" ] && ctld_up; then
        timeout 10 scancel --full -p debug 2>/dev/null || true
        # wait for the jobs' steps to end, or slurmstepd orphans stay behind
        for _ in $(seq 1 75); do
            [ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING,PENDING,CONFIGURING,SUSPENDED,REQUEUED -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_pid "$STATE/slurmd.pid" slurmd
    stop_pid "$STATE/slurmctld.pid" slurmctld
    stop_pid "$STATE/munge/munged.pid" munged
    say "down"
}

cmd_env() {
    echo "export SLURM_CONF=$CONF"
    echo "export PATH=$STATE/bin:\$PATH"
}

case "${1:-}" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: bash scripts/slurm.sh install|up|down|status|env" >&2; exit 2 ;;
esac
