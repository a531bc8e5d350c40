#!/usr/bin/env bash
# testclusters.sh — install, start and check real batch systems on this machine
# for clusterjupyter's tests and CI (Debian 12, run as root, no systemd).
#
#   scripts/testclusters.sh install [all|slurm|sshd|sge|pbs]...
#   scripts/testclusters.sh start   [all|slurm|sshd|sge|pbs]...
#   scripts/testclusters.sh restart [all|slurm|sshd|sge|pbs]...
#   scripts/testclusters.sh stop    [all|slurm|sshd|sge|pbs]...
#   scripts/testclusters.sh status  [all|slurm|sshd|sge|pbs]...
#
# No service named means "all".  Everything is idempotent: `start` on a healthy
# service only checks it (well under a second); on a cold start it also runs a
# trivial job and exits non-zero, printing the tail of the daemon logs, if that
# job does not work.  What is up is described in $STATE/clusters.json
# (see scripts/README.md for its keys).
#
# Environment:
#   CJ_TESTCLUSTERS_DIR  state directory (default /var/tmp/clusterjupyter-testclusters)
#   CJ_TEST_SSH_PORT     port of the loopback sshd (default 2222)
set -euo pipefail
umask 022

STATE=${CJ_TESTCLUSTERS_DIR:-/var/tmp/clusterjupyter-testclusters}
SSH_PORT=${CJ_TEST_SSH_PORT:-2222}
LOGDIR=$STATE/log
RUNDIR=$STATE/run
HOST=$(hostname -s)
NCPU=$(nproc)
ALL_SERVICES=(slurm sshd sge pbs)
export DEBIAN_FRONTEND=noninteractive
# Daemons and client commands must not depend on the caller's locale or a
# stray SLURM_CONF / SGE_* from the calling shell.
export LC_ALL=C
unset SLURM_CONF

# ----------------------------------------------------------------------------
# generic helpers
# ----------------------------------------------------------------------------

say() { printf 'testclusters: %s\n' "$*" >&2; }

# fail SERVICE MESSAGE [LOGFILE...]: print the message and the logs' tails, exit 1
fail() {
    local svc=$1 msg=$2 f
    shift 2
    say "ERROR [$svc]: $msg"
    # clusters.json must not claim that a broken service is up
    case $svc in
    slurm) drop_section slurm && drop_section pbs ;;
    sshd) drop_section ssh ;;
    sge | pbs) drop_section "$svc" ;;
    esac
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf '\n----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
    exit 1
}

# launch COMMAND...: start a daemon without our lock's file descriptor (a
# daemon inheriting it would hold the lock forever) and without our stdin.
launch() { "$@" 9>&- </dev/null; }

# now_ms: milliseconds since the epoch
now_ms() { date +%s%3N; }

# wait_until TIMEOUT_S COMMAND...: poll COMMAND every 0.1 s until it succeeds
wait_until() {
    local deadline=$(($(now_ms) + $1 * 1000))
    shift
    until "$@" >/dev/null 2>&1; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.1
    done
}

# running PID: is the process alive?  PID 1 here is not an init that reaps
# orphans at once, so a daemon that exited can linger as a zombie for a few
# seconds: zombies count as gone.
running() {
    local stat
    stat=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# pid_alive PIDFILE COMM: print the pid written in PIDFILE if that process is
# alive and is named COMM (guards against stale pid files whose pid got reused)
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [[ -r $pidfile ]] || return 1
    read -r pid <"$pidfile" 2>/dev/null || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(cat /proc/"$pid"/comm 2>/dev/null) == "$comm" ]] || return 1
    running "$pid" || return 1
    echo "$pid"
}

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        running "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

# stop_daemon PIDFILE COMM: stop the daemon named in PIDFILE; also any other
# process with exactly that name (e.g. one started by a package's init script
# or by an earlier run with another state dir), since it would hold the port.
stop_daemon() {
    local pidfile=$1 comm=$2 pid
    if pid=$(pid_alive "$pidfile" "$comm"); then
        stop_pid "$pid"
    fi
    for pid in $(pgrep -x "$comm" || true); do
        running "$pid" && stop_pid "$pid"
    done
    rm -f "$pidfile"
}

# write_if_changed FILE MODE: write stdin to FILE; return 0 if content changed
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

# port_listening PORT: is something listening on 127.0.0.1:PORT / *:PORT?
port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    # state 0A = LISTEN in /proc/net/tcp{,6}
    awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {found=1} END {exit !found}' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# ----------------------------------------------------------------------------
# packages
# ----------------------------------------------------------------------------

APT_UPDATED=0

# apt_update: apt-get update, once per run (waits if another apt holds the lock)
apt_update() {
    ((APT_UPDATED)) && return 0
    apt-get update -qq -o DPkg::Lock::Timeout=600 >>"$LOGDIR/apt.log" 2>&1 ||
        fail apt "apt-get update failed" "$LOGDIR/apt.log"
    APT_UPDATED=1
}

# pkg_installed PKG: is the Debian package installed?
pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# apt_install PKG...: install whatever of PKG... is missing (noninteractive, quiet)
apt_install() {
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    mkdir -p "$LOGDIR"
    say "apt-get install ${missing[*]}"
    apt_update
    # Package init scripts do not start anything here (policy-rc.d); where they
    # do, start functions below replace such daemons with their own.
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >>"$LOGDIR/apt.log" 2>&1 ||
        fail apt "apt-get install ${missing[*]} failed" "$LOGDIR/apt.log"
}

# ----------------------------------------------------------------------------
# clusters.json: one JSON object per service in $STATE/sections/NAME.json,
# merged into $STATE/clusters.json whenever a section changes.
# ----------------------------------------------------------------------------

json_str() { # json_str STRING: a JSON string literal (no control characters expected)
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

set_section() { # set_section NAME JSON
    mkdir -p "$STATE/sections"
    if printf '%s\n' "$2" | write_if_changed "$STATE/sections/$1.json" 644; then
        merge_sections
    elif [[ ! -f $STATE/clusters.json ]]; then
        merge_sections
    fi
}

drop_section() { # drop_section NAME
    if [[ -f $STATE/sections/$1.json ]]; then
        rm -f "$STATE/sections/$1.json"
        merge_sections
    fi
    return 0
}

merge_sections() {
    local f name sep="" out="{"
    for f in "$STATE"/sections/*.json; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .json)
        out+="$sep"$'\n'" $(json_str "$name"): $(<"$f")"
        sep=","
    done
    out+=$'\n}'
    printf '%s\n' "$out" | write_if_changed "$STATE/clusters.json" 644 || true
}

# ----------------------------------------------------------------------------
# munge + MariaDB + slurmdbd + slurmctld + slurmd  (service "slurm")
# ----------------------------------------------------------------------------

SLURM_CONF_FILE=/etc/slurm/slurm.conf
SLURMDBD_CONF_FILE=/etc/slurm/slurmdbd.conf
SLURM_SPOOL=$STATE/slurm
SLURM_PARTITION=debug
SLURM_CLUSTER=cjtest
SLURM_DB=slurm_acct_db
SLURM_DB_USER=slurm
SLURM_DB_PASS=cj-test-only # a throwaway database on a test machine
MUNGE_LOG=/var/log/munge/munged.log
MARIADB_LOG=$LOGDIR/mariadb.log

slurm_install() {
    apt_install munge slurm-wlm slurmdbd mariadb-server mariadb-client
}

# Node memory: modest and never more than the machine has (slurmd drains a node
# whose RealMemory exceeds the real memory).
slurm_memory_mb() {
    local total
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    local mem=$((total - 512))
    ((mem > 4000)) && mem=4000
    ((mem < 256)) && mem=256
    echo "$mem"
}

slurm_conf() {
    local mem
    mem=$(slurm_memory_mb)
    cat <<EOF
# Written by clusterjupyter scripts/testclusters.sh: a one-node test cluster.
ClusterName=$SLURM_CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$SLURM_SPOOL/ctld
SlurmdSpoolDir=$SLURM_SPOOL/d
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups on these machines.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / NCPU))
# A node that was down (e.g. machine reused) comes back by itself.
ReturnToService=2
# The default mail program is not installed.
MailProg=/bin/true
# Fast scheduling for tests.  Measured here (sbatch -> job running): defaults
# 2.4-2.7 s; batch_sched_delay=0 (default 3 s) ~0.7 s; with bf_interval=1 too
# 0.1-0.85 s, mean 0.35 s (most jobs are then started by the backfill pass).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1,default_queue_depth=1000
# Memory enforcement without cgroups: the linux gatherer polls each step every
# second and kills (SIGKILL) a step whose RSS exceeds its --mem; the job then
# ends FAILED with ExitCode 0:9 (OUT_OF_MEMORY needs cgroups).  Note the underscore in
# jobacct_gather/...: "jobacctgather/linux" makes the daemons die at start.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
# Time limits end jobs promptly (no grace minutes, 1 s between SIGTERM and SIGKILL).
OverTimeLimit=0
KillWait=1
InactiveLimit=0
MinJobAge=300
# Jobs are not run a second time behind the tests' back after a node failure.
JobRequeue=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$mem State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
    cat <<EOF
# Written by clusterjupyter scripts/testclusters.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=$RUNDIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$SLURM_DB_USER
StoragePass=$SLURM_DB_PASS
StorageLoc=$SLURM_DB
EOF
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

munge_start() {
    if pid_alive /run/munge/munged.pid munged >/dev/null && munge_ok; then
        return 0
    fi
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge
    install -d -o munge -g munge -m 0755 /run/munge /var/log/munge
    # The package's postinst makes a key; make one if it is missing or empty.
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    stop_daemon /run/munge/munged.pid munged
    # --force: start even if a stale socket or pid file from a previous boot is left.
    launch runuser -u munge -- /usr/sbin/munged --force >>"$LOGDIR/munged.out" 2>&1 ||
        fail slurm "munged did not start" "$LOGDIR/munged.out" "$MUNGE_LOG"
    wait_until 10 munge_ok || fail slurm "munge -n | unmunge fails" "$MUNGE_LOG"
}

mariadb_ok() { mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1; }

mariadb_start() {
    if ! mariadb_ok; then
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql >>"$MARIADB_LOG" 2>&1 ||
                fail slurm "mariadb-install-db failed" "$MARIADB_LOG"
        fi
        stop_daemon /run/mysqld/mysqld.pid mariadbd
        touch "$MARIADB_LOG"
        chown mysql:mysql "$MARIADB_LOG"
        launch start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
            --user=mysql --log-error="$MARIADB_LOG" ||
            fail slurm "mariadbd did not start" "$MARIADB_LOG"
        wait_until 60 mariadb_ok || fail slurm "MariaDB does not answer" "$MARIADB_LOG"
    fi
    # Root logs in through the unix socket; the slurm user is for slurmdbd.
    mariadb <<EOF || fail slurm "could not create the accounting database" "$MARIADB_LOG"
CREATE DATABASE IF NOT EXISTS $SLURM_DB;
CREATE USER IF NOT EXISTS '$SLURM_DB_USER'@'localhost' IDENTIFIED BY '$SLURM_DB_PASS';
GRANT ALL ON $SLURM_DB.* TO '$SLURM_DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

slurmdbd_ok() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

slurmdbd_start() {
    if pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd >/dev/null && slurmdbd_ok; then
        return 0
    fi
    stop_daemon "$RUNDIR/slurmdbd.pid" slurmdbd
    launch /usr/sbin/slurmdbd >>"$LOGDIR/slurmdbd.out" 2>&1 ||
        fail slurm "slurmdbd did not start" "$LOGDIR/slurmdbd.out" "$LOGDIR/slurmdbd.log"
    wait_until 30 slurmdbd_ok || fail slurm "slurmdbd does not answer" "$LOGDIR/slurmdbd.log"
}

# slurm_node_state: state of our node as sinfo sees it (idle, mixed, down*, ...)
slurm_node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1; }

slurm_node_up() {
    [[ $(slurm_node_state) =~ ^(idle|mixed|allocated|completing)$ ]]
}

slurm_all_alive() {
    munge_ok && mariadb_ok &&
        pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd >/dev/null &&
        pid_alive "$RUNDIR/slurmctld.pid" slurmctld >/dev/null &&
        pid_alive "$RUNDIR/slurmd.pid" slurmd >/dev/null
}

slurm_configs_current() {
    [[ -f $SLURM_CONF_FILE && -f $SLURMDBD_CONF_FILE ]] &&
        cmp -s <(slurm_conf) "$SLURM_CONF_FILE" &&
        cmp -s <(slurmdbd_conf) "$SLURMDBD_CONF_FILE"
}

slurm_healthy() { slurm_all_alive && slurm_node_up; }

SLURM_LOGS=("$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$LOGDIR/slurmdbd.log" "$MUNGE_LOG" "$MARIADB_LOG")

slurm_section() {
    set_section slurm "{\"partition\": $(json_str "$SLURM_PARTITION"), \"node\": $(json_str "$HOST"), \
\"cluster\": $(json_str "$SLURM_CLUSTER"), \"accounting\": true, \"cpus\": $NCPU, \"memory_mb\": $(slurm_memory_mb), \
\"conf\": $(json_str "$SLURM_CONF_FILE"), \"log_dir\": $(json_str "$LOGDIR")}"
}

SLURM_CHECKED=0

slurm_start() {
    ((SLURM_CHECKED)) && return 0 # e.g. "start slurm pbs"
    SLURM_CHECKED=1
    if slurm_configs_current && slurm_healthy; then
        say "slurm: already running (node $HOST $(slurm_node_state))"
        slurm_section
        return 0
    fi
    slurm_install
    mkdir -p "$LOGDIR" "$RUNDIR" "$SLURM_SPOOL/ctld" "$SLURM_SPOOL/d" /etc/slurm
    local t0 changed=0
    t0=$(now_ms)
    slurm_conf | write_if_changed "$SLURM_CONF_FILE" 644 && changed=1
    slurmdbd_conf | write_if_changed "$SLURMDBD_CONF_FILE" 600 && changed=1
    munge_start
    mariadb_start
    if ((changed)); then
        # A new configuration: restart every slurm daemon with it.
        stop_daemon "$RUNDIR/slurmd.pid" slurmd
        stop_daemon "$RUNDIR/slurmctld.pid" slurmctld
        stop_daemon "$RUNDIR/slurmdbd.pid" slurmdbd
    fi
    slurmdbd_start
    if ! pid_alive "$RUNDIR/slurmctld.pid" slurmctld >/dev/null; then
        stop_daemon "$RUNDIR/slurmctld.pid" slurmctld
        # Keeps the saved state (job ids go on increasing, so they stay unique
        # in the accounting database); if that state is unreadable, start clean.
        if ! launch /usr/sbin/slurmctld >>"$LOGDIR/slurmctld.out" 2>&1 ||
            ! wait_until 20 scontrol ping; then
            say "slurm: slurmctld did not come up with its saved state; clearing it"
            stop_daemon "$RUNDIR/slurmctld.pid" slurmctld
            rm -rf "${SLURM_SPOOL:?}/ctld" && mkdir -p "$SLURM_SPOOL/ctld"
            launch /usr/sbin/slurmctld -c >>"$LOGDIR/slurmctld.out" 2>&1 ||
                fail slurm "slurmctld did not start" "$LOGDIR/slurmctld.out" "$LOGDIR/slurmctld.log"
        fi
    fi
    wait_until 30 scontrol ping || fail slurm "slurmctld does not answer" "${SLURM_LOGS[@]}"
    if ! pid_alive "$RUNDIR/slurmd.pid" slurmd >/dev/null; then
        stop_daemon "$RUNDIR/slurmd.pid" slurmd
        launch /usr/sbin/slurmd >>"$LOGDIR/slurmd.out" 2>&1 ||
            fail slurm "slurmd did not start" "$LOGDIR/slurmd.out" "$LOGDIR/slurmd.log"
    fi
    if ! wait_until 20 slurm_node_up; then
        # e.g. "down" or "drained" left over from an earlier run
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        wait_until 20 slurm_node_up ||
            fail slurm "node $HOST is '$(slurm_node_state)', not idle" "${SLURM_LOGS[@]}"
    fi
    slurm_check_job
    slurm_section
    say "slurm: started in $(($(now_ms) - t0))ms (node $HOST $(slurm_node_state), partition $SLURM_PARTITION)"
}

# slurm_check_job: a trivial batch job must run and reach the accounting
# database.  (Polling for a file it makes is faster than `sbatch --wait`, which
# polls in 2 s steps.)
slurm_check_job() {
    local out jobid mark=$RUNDIR/slurm-health.$$
    rm -f "$mark"
    out=$(sbatch --parsable -p "$SLURM_PARTITION" -t 1 -o /dev/null -J cj-health \
        --wrap "touch $mark" 2>&1) || fail slurm "sbatch of a trivial job failed: $out" "${SLURM_LOGS[@]}"
    jobid=${out%%;*}
    wait_until 30 test -e "$mark" ||
        fail slurm "trivial job $jobid did not run: $(squeue -h -j "$jobid" -o '%T %r' 2>&1)" "${SLURM_LOGS[@]}"
    rm -f "$mark"
    wait_until 20 slurm_sacct_has "$jobid" ||
        fail slurm "job $jobid not in sacct: $(sacct -X -n -j "$jobid" -o JobID,State,ExitCode 2>&1)" "${SLURM_LOGS[@]}"
}

slurm_sacct_has() { [[ $(sacct -X -n -P -j "$1" -o State 2>/dev/null) == COMPLETED* ]]; }

slurm_stop() {
    stop_daemon "$RUNDIR/slurmd.pid" slurmd
    stop_daemon "$RUNDIR/slurmctld.pid" slurmctld
    stop_daemon "$RUNDIR/slurmdbd.pid" slurmdbd
    if mariadb_ok; then
        mariadb-admin shutdown >/dev/null 2>&1 || stop_daemon /run/mysqld/mysqld.pid mariadbd
    fi
    stop_daemon /run/munge/munged.pid munged
    drop_section slurm
    drop_section pbs # the PBS wrappers submit to this SLURM
    say "slurm: stopped"
}

slurm_status() {
    local ok=0 d
    if munge_ok; then echo "slurm: munge ok"; else echo "slurm: munge NOT working"; ok=1; fi
    if mariadb_ok; then echo "slurm: mariadb ok"; else echo "slurm: mariadb NOT running"; ok=1; fi
    for d in slurmdbd slurmctld slurmd; do
        if pid_alive "$RUNDIR/$d.pid" "$d" >/dev/null; then
            echo "slurm: $d running (pid $(pid_alive "$RUNDIR/$d.pid" "$d"))"
        else
            echo "slurm: $d NOT running"
            ok=1
        fi
    done
    if ((ok == 0)); then
        if slurm_node_up; then
            echo "slurm: node $HOST $(slurm_node_state)"
        else
            echo "slurm: node $HOST is '$(slurm_node_state)'"
            ok=1
        fi
    fi
    return $ok
}

# ----------------------------------------------------------------------------
# PBS: Torque-compatible qsub/qstat/qdel (Perl wrappers over SLURM) from the
# slurm-wlm-torque package.  It conflicts with gridengine-client (both own
# /usr/bin/qsub), so it is unpacked into $STATE/torque, not installed.
# ----------------------------------------------------------------------------

TORQUE_DIR=$STATE/torque
TORQUE_BIN=$TORQUE_DIR/usr/bin

pbs_install() {
    slurm_install
    apt_install libslurm-perl libslurmdb-perl libswitch-perl
    [[ -x $TORQUE_BIN/qsub ]] && return 0
    local dl=$STATE/torque-download
    rm -rf "$dl" && mkdir -p "$dl"
    say "apt-get download slurm-wlm-torque"
    apt_update
    (cd "$dl" && apt-get download -qq slurm-wlm-torque) >>"$LOGDIR/apt.log" 2>&1 ||
        fail pbs "apt-get download slurm-wlm-torque failed" "$LOGDIR/apt.log"
    rm -rf "$TORQUE_DIR"
    dpkg -x "$dl"/slurm-wlm-torque_*.deb "$TORQUE_DIR" || fail pbs "dpkg -x failed"
    rm -rf "$dl"
    [[ -x $TORQUE_BIN/qsub ]] || fail pbs "no qsub in $TORQUE_BIN"
}

# The wrappers run "$FindBin::Bin/sbatch" (their own directory), so SLURM's
# commands must be found next to them.
pbs_link_slurm_commands() {
    local c
    for c in sbatch salloc srun; do
        [[ -L $TORQUE_BIN/$c ]] || ln -sfn "/usr/bin/$c" "$TORQUE_BIN/$c"
    done
}

pbs_qstat_ok() { PATH=$TORQUE_BIN:$PATH "$TORQUE_BIN/qstat" >/dev/null 2>&1; }

pbs_section() {
    set_section pbs "{\"bin_dir\": $(json_str "$TORQUE_BIN"), \"queue\": $(json_str "$SLURM_PARTITION")}"
}

pbs_start() {
    slurm_start
    if [[ -x $TORQUE_BIN/qsub && -f $STATE/sections/pbs.json ]] && pbs_qstat_ok; then
        say "pbs: already available ($TORQUE_BIN)"
        pbs_section
        return 0
    fi
    pbs_install
    pbs_link_slurm_commands
    # Check: a #PBS script goes through the wrapper's qsub into SLURM, qstat shows it.
    local jobid out
    cat >"$RUNDIR/pbs-health.sh" <<'EOF'
#!/bin/sh
#PBS -N cj-pbs-health
#PBS -l walltime=00:01:00
echo pbs-ok
EOF
    jobid=$(cd "$RUNDIR" && PATH=$TORQUE_BIN:$PATH "$TORQUE_BIN/qsub" -j oe -o "$RUNDIR/pbs-health.out" \
        pbs-health.sh 2>&1) ||
        fail pbs "qsub failed: $jobid" "$LOGDIR/slurmctld.log"
    jobid=$(tr -dc '0-9' <<<"${jobid%%.*}")
    out=$(PATH=$TORQUE_BIN:$PATH "$TORQUE_BIN/qstat" 2>&1) || fail pbs "qstat failed: $out"
    grep -q "^${jobid}[ .]" <<<"$out" || fail pbs "qstat does not show job $jobid: $out"
    pbs_section
    say "pbs: Torque wrappers work (qsub -> SLURM job $jobid) in $TORQUE_BIN"
}

pbs_stop() {
    drop_section pbs
    say "pbs: removed from clusters.json (it has no daemon of its own)"
}

pbs_status() {
    if [[ -x $TORQUE_BIN/qsub ]] && pbs_qstat_ok; then
        echo "pbs: qstat from $TORQUE_BIN ok"
    else
        echo "pbs: NOT available ($TORQUE_BIN)"
        return 1
    fi
}

# ----------------------------------------------------------------------------
# sshd on 127.0.0.1:$SSH_PORT with its own keys (service "sshd")
# ----------------------------------------------------------------------------

SSH_DIR=$STATE/ssh
SSHD_CONFIG=$SSH_DIR/sshd_config
# an unprivileged user who logs in with a password (the tests type it), and a key
# with a passphrase
SSH_PASSWORD_USER=cjpassword
SSHD_PID=$SSH_DIR/sshd.pid
SSHD_LOG=$LOGDIR/sshd.log

sshd_install() { apt_install openssh-server openssh-client; }

sshd_config() {
    cat <<EOF
# Written by clusterjupyter scripts/testclusters.sh: a loopback sshd for tests.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
# Keys live in the state dir, so root's ~/.ssh is never touched; /var/tmp is
# world-writable, which StrictModes would refuse.
AuthorizedKeysFile $SSH_DIR/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
# Tests open many connections and channels at once.
MaxStartups 100:30:200
MaxSessions 64
ClientAliveInterval 15
ClientAliveCountMax 4
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
LogLevel INFO
# Password logins for one unprivileged test user only.
Match User $SSH_PASSWORD_USER
    PasswordAuthentication yes
    AuthorizedKeysFile none
EOF
}

sshd_keys() {
    mkdir -p "$SSH_DIR"
    chmod 700 "$SSH_DIR"
    local k
    for k in ssh_host_ed25519_key other_host_ed25519_key id_ed25519; do
        [[ -s $SSH_DIR/$k && -s $SSH_DIR/$k.pub ]] && continue
        rm -f "$SSH_DIR/$k" "$SSH_DIR/$k.pub"
        ssh-keygen -q -t ed25519 -N '' -C "clusterjupyter-test-$k" -f "$SSH_DIR/$k"
    done
    # secrets for the password user and the encrypted key, generated once
    local f
    for f in password passphrase; do
        [[ -s $SSH_DIR/$f ]] || (umask 077 && head -c 18 /dev/urandom | base64 >"$SSH_DIR/$f")
    done
    if [[ ! -s $SSH_DIR/id_ed25519_encrypted ]]; then
        rm -f "$SSH_DIR/id_ed25519_encrypted" "$SSH_DIR/id_ed25519_encrypted.pub"
        ssh-keygen -q -t ed25519 -N "$(cat "$SSH_DIR/passphrase")" \
            -C clusterjupyter-test-encrypted -f "$SSH_DIR/id_ed25519_encrypted"
    fi
    id -u "$SSH_PASSWORD_USER" >/dev/null 2>&1 ||
        useradd -m -s /bin/bash "$SSH_PASSWORD_USER" || fail sshd "cannot create user $SSH_PASSWORD_USER"
    echo "$SSH_PASSWORD_USER:$(cat "$SSH_DIR/password")" | chpasswd ||
        fail sshd "cannot set the password of $SSH_PASSWORD_USER"
    cat "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/id_ed25519_encrypted.pub" |
        write_if_changed "$SSH_DIR/authorized_keys" 600 || true
    # known_hosts holds the real host key; known_hosts_other a different key for
    # the same names (a host-key mismatch); known_hosts_empty nothing (unknown host).
    local names="[127.0.0.1]:$SSH_PORT,[localhost]:$SSH_PORT,[$HOST]:$SSH_PORT"
    if ((SSH_PORT == 22)); then names="127.0.0.1,localhost,$HOST"; fi
    echo "$names $(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" |
        write_if_changed "$SSH_DIR/known_hosts" 644 || true
    echo "$names $(cut -d' ' -f1,2 "$SSH_DIR/other_host_ed25519_key.pub")" |
        write_if_changed "$SSH_DIR/known_hosts_other" 644 || true
    : | write_if_changed "$SSH_DIR/known_hosts_empty" 644 || true
}

# sshd_login_ok: a key login with strict host key checking against known_hosts
sshd_login_ok() {
    ssh -F /dev/null -p "$SSH_PORT" -i "$SSH_DIR/id_ed25519" -o IdentitiesOnly=yes \
        -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$SSH_DIR/known_hosts" \
        -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5 root@127.0.0.1 true </dev/null
}

# sshd_banner_ok: the server answers with an SSH banner (a cheap check for the
# fast path; a full key login takes ~0.3 s here, most of it root's .bashrc)
sshd_banner_ok() {
    local line
    line=$(bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && read -r -t 2 l <&3 && echo "$l"' _ "$SSH_PORT" \
        2>/dev/null) || return 1
    [[ $line == SSH-2.0-* ]]
}

sshd_section() {
    set_section ssh "{\"host\": \"127.0.0.1\", \"port\": $SSH_PORT, \"user\": \"root\", \
\"identity_file\": $(json_str "$SSH_DIR/id_ed25519"), \"known_hosts\": $(json_str "$SSH_DIR/known_hosts"), \
\"unknown_host_known_hosts\": $(json_str "$SSH_DIR/known_hosts_other"), \
\"empty_known_hosts\": $(json_str "$SSH_DIR/known_hosts_empty"), \
\"host_public_key\": $(json_str "$SSH_DIR/ssh_host_ed25519_key.pub"), \
\"password_user\": $(json_str "$SSH_PASSWORD_USER"), \"password_file\": $(json_str "$SSH_DIR/password"), \
\"encrypted_identity_file\": $(json_str "$SSH_DIR/id_ed25519_encrypted"), \
\"passphrase_file\": $(json_str "$SSH_DIR/passphrase"), \
\"pid_file\": $(json_str "$SSHD_PID"), \"log\": $(json_str "$SSHD_LOG")}"
}

sshd_start() {
    if [[ -f $SSHD_CONFIG ]] && cmp -s <(sshd_config) "$SSHD_CONFIG" &&
        pid_alive "$SSHD_PID" sshd >/dev/null && sshd_banner_ok; then
        say "sshd: already running on 127.0.0.1:$SSH_PORT"
        sshd_section
        return 0
    fi
    sshd_install
    mkdir -p "$LOGDIR"
    sshd_keys
    sshd_config | write_if_changed "$SSHD_CONFIG" 600 || true
    # Privilege separation directory, normally made by the init script.
    install -d -m 0755 /run/sshd
    # Only our own sshd (by its pid file) is stopped, never the machine's.
    local pid
    if pid=$(pid_alive "$SSHD_PID" sshd); then stop_pid "$pid"; fi
    rm -f "$SSHD_PID"
    if port_listening "$SSH_PORT"; then
        fail sshd "port $SSH_PORT is taken by another program (set CJ_TEST_SSH_PORT)"
    fi
    /usr/sbin/sshd -t -f "$SSHD_CONFIG" >>"$SSHD_LOG" 2>&1 || fail sshd "bad sshd config" "$SSHD_LOG"
    launch /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG" >>"$LOGDIR/sshd.out" 2>&1 ||
        fail sshd "sshd did not start" "$LOGDIR/sshd.out" "$SSHD_LOG"
    wait_until 10 sshd_login_ok || fail sshd "key login to root@127.0.0.1:$SSH_PORT fails" "$SSHD_LOG"
    # The mismatching known_hosts must really be refused.
    if ssh -F /dev/null -p "$SSH_PORT" -i "$SSH_DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$SSH_DIR/known_hosts_other" \
        -o GlobalKnownHostsFile=/dev/null root@127.0.0.1 true </dev/null >/dev/null 2>&1; then
        fail sshd "login with known_hosts_other was not refused"
    fi
    sshd_section
    say "sshd: running on 127.0.0.1:$SSH_PORT (pid $(pid_alive "$SSHD_PID" sshd))"
}

sshd_stop() {
    local pid
    if pid=$(pid_alive "$SSHD_PID" sshd); then stop_pid "$pid"; fi
    rm -f "$SSHD_PID"
    drop_section ssh
    say "sshd: stopped"
}

# Restart the listening sshd only: sessions already open (their own sshd
# processes) go on, like a real server's restart.
sshd_restart() {
    local pid
    if pid=$(pid_alive "$SSHD_PID" sshd); then stop_pid "$pid"; fi
    rm -f "$SSHD_PID"
    sshd_start
}

sshd_status() {
    if pid_alive "$SSHD_PID" sshd >/dev/null && sshd_login_ok >/dev/null 2>&1; then
        echo "sshd: running on 127.0.0.1:$SSH_PORT, key login ok"
    else
        echo "sshd: NOT working on 127.0.0.1:$SSH_PORT"
        return 1
    fi
}

# ----------------------------------------------------------------------------
# Grid Engine 8.1.9 (service "sge")
# ----------------------------------------------------------------------------

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SGE_SPOOL=/var/spool/gridengine
SGE_QMASTER_LOG=$SGE_SPOOL/qmaster/messages
SGE_QUEUE=all.q

sge_install() { apt_install gridengine-master gridengine-exec gridengine-client; }

# /usr/bin/q* are wrappers that run util/arch (~0.1 s) on every call: the
# programs are called directly (SGE_ROOT and SGE_CELL are exported above).
SGE_BIN=/usr/lib/gridengine

SGE_QMASTER_PID=$SGE_SPOOL/qmaster/qmaster.pid
# sge_execd names its spool directory after the name it resolves for itself,
# which here is "localhost" (127.0.0.1 resolves back to localhost), not $HOST.
sge_execd_dir() {
    local d
    for d in "$SGE_SPOOL/execd/localhost" "$SGE_SPOOL/execd/$HOST"; do
        [[ -e $d/execd.pid ]] && echo "$d" && return 0
    done
    echo "$SGE_SPOOL/execd/localhost"
}
SGE_EXECD_PID=$(sge_execd_dir)/execd.pid
SGE_EXECD_LOG=$(sge_execd_dir)/messages

sge_qmaster_ok() { "$SGE_BIN"/qconf -sh >/dev/null 2>&1; }

# sge_queue_state: state letters of our queue instance ("" when fine, "u" while
# the execd is not heard from, "a" in load alarm, ...), or "missing"
sge_queue_state() {
    "$SGE_BIN"/qstat -f -q "$SGE_QUEUE@$HOST" 2>/dev/null |
        awk -v q="$SGE_QUEUE@$HOST" '$1 == q {found=1; print $6} END {if (!found) print "missing"}'
}

sge_queue_ok() { [[ -z $(sge_queue_state) ]]; }

sge_healthy() {
    pid_alive "$SGE_QMASTER_PID" sge_qmaster >/dev/null &&
        pid_alive "$SGE_EXECD_PID" sge_execd >/dev/null &&
        sge_queue_ok
}

sge_section() {
    set_section sge "{\"sge_root\": $(json_str "$SGE_ROOT"), \"sge_cell\": $(json_str "$SGE_CELL"), \
\"queue\": $(json_str "$SGE_QUEUE"), \"host\": $(json_str "$HOST"), \"slots\": $NCPU, \"pe\": \"smp\", \
\"qmaster_log\": $(json_str "$SGE_QMASTER_LOG"), \"execd_log\": $(json_str "$SGE_EXECD_LOG")}"
}

# sge_modify KIND NAME KEY VALUE...: change attributes of a configuration
# object without an editor: dump it (qconf -sKIND NAME), replace the lines of
# the KEYs, load it back (qconf -MKIND FILE).  Continuation lines ("\" at the
# end) of a replaced attribute are dropped with it.
sge_modify() {
    local kind=$1 name=$2 dir f
    shift 2
    dir=$(mktemp -d)
    # -Mconf takes the configuration's name from the file's name ("global").
    f=$dir/${name:-config}
    # shellcheck disable=SC2086  # an empty NAME (scheduler config) is no argument
    "$SGE_BIN"/qconf "-s$kind" $name >"$f.orig" || { rm -rf "$dir"; return 1; }
    while (($#)); do
        printf '%s\t%s\n' "$1" "$2"
        shift 2
    done >"$dir/changes"
    awk -F'\t' '
        FILENAME == ARGV[1] { val[$1] = $2; next }
        skip { skip = /\\$/; next }
        { split($0, w, /[ \t]+/) }
        (w[1] in val) { printf "%-30s %s\n", w[1], val[w[1]]; done[w[1]] = 1; skip = /\\$/; next }
        { print }
        END { for (k in val) if (!(k in done)) printf "%-30s %s\n", k, val[k] }
    ' "$dir/changes" "$f.orig" >"$f"
    if ! cmp -s "$f" "$f.orig"; then
        "$SGE_BIN"/qconf "-M$kind" "$f" >/dev/null || { rm -rf "$dir"; return 1; }
    fi
    rm -rf "$dir"
}

# sge_configure: the one-node cluster's configuration (idempotent).
sge_configure() {
    local dir
    dir=$(mktemp -d)
    # Root may submit (default min_uid/min_gid 1000 rejects uid 0); no mailer is
    # installed; load reports every 10 s; accounting (qacct) written at once.
    sge_modify conf global min_uid 0 min_gid 0 mailer /bin/true load_report_time 00:00:10 \
        reporting_params "accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00" ||
        return 1
    # Schedule every second and right after each submit/finish (default: 15 s).
    sge_modify sconf "" schedule_interval 0:0:1 flush_submit_sec 1 flush_finish_sec 1 \
        job_load_adjustments NONE load_adjustment_decay_time 0:0:0 || return 1
    "$SGE_BIN"/qconf -ss 2>/dev/null | grep -qx "$HOST" || "$SGE_BIN"/qconf -as "$HOST" >/dev/null || return 1
    if ! "$SGE_BIN"/qconf -se "$HOST" >/dev/null 2>&1; then
        printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
            "$HOST" >"$dir/exechost"
        "$SGE_BIN"/qconf -Ae "$dir/exechost" >/dev/null || return 1
    fi
    if ! "$SGE_BIN"/qconf -shgrp @allhosts >/dev/null 2>&1; then
        printf 'group_name @allhosts\nhostlist %s\n' "$HOST" >"$dir/allhosts"
        "$SGE_BIN"/qconf -Ahgrp "$dir/allhosts" >/dev/null || return 1
    fi
    # A parallel environment so that jobs can ask for several slots (-pe smp N).
    # shellcheck disable=SC2016  # $pe_slots is SGE's, not the shell's
    if ! "$SGE_BIN"/qconf -sp smp >/dev/null 2>&1; then
        printf '%s\n' "pe_name smp" "slots 9999" "user_lists NONE" "xuser_lists NONE" \
            "start_proc_args NONE" "stop_proc_args NONE" 'allocation_rule $pe_slots' \
            "control_slaves FALSE" "job_is_first_task TRUE" "urgency_slots min" \
            "accounting_summary FALSE" "qsort_args NONE" >"$dir/smp"
        "$SGE_BIN"/qconf -Ap "$dir/smp" >/dev/null || return 1
    fi
    if ! "$SGE_BIN"/qconf -sq "$SGE_QUEUE" >/dev/null 2>&1; then
        # from the template queue, minus its PEs that do not exist here
        "$SGE_BIN"/qconf -sq | awk -v q="$SGE_QUEUE" -v h="$HOST" '
            $1 == "qname" {print "qname " q; next}
            $1 == "hostlist" {print "hostlist " h; next}
            $1 == "pe_list" {print "pe_list smp"; next}
            {print}' >"$dir/$SGE_QUEUE"
        "$SGE_BIN"/qconf -Aq "$dir/$SGE_QUEUE" >/dev/null || return 1
    fi
    # The queue: one slot per core; no load threshold (a busy test machine would
    # put the queue in alarm state and stop scheduling); scripts run by the
    # interpreter named on their #! line, like on most sites' queues.
    sge_modify q "$SGE_QUEUE" hostlist @allhosts slots "$NCPU" load_thresholds NONE pe_list smp \
        shell /bin/bash shell_start_mode unix_behavior || return 1
    rm -rf "$dir"
}

sge_start() {
    if sge_healthy; then
        say "sge: already running (queue $SGE_QUEUE@$HOST)"
        sge_section
        return 0
    fi
    sge_install
    local t0
    t0=$(now_ms)
    # The qmaster must know itself under the machine's name, and localhost (what
    # 127.0.0.1 resolves back to) is the same host: without host_aliases clients
    # fail with "client IP resolved to host name localhost. This is not
    # identical to clients host name vm".
    local common=$SGE_ROOT/$SGE_CELL/common aliases_changed=0
    echo "$HOST" | write_if_changed "$common/act_qmaster" 644 && aliases_changed=1
    echo "$HOST localhost" | write_if_changed "$common/host_aliases" 644 && aliases_changed=1
    chown sgeadmin:sgeadmin "$common/act_qmaster" "$common/host_aliases"
    install -d -o sgeadmin -g sgeadmin "$SGE_SPOOL/qmaster" "$SGE_SPOOL/execd"
    if [[ ! -e $SGE_SPOOL/spooldb/sge ]]; then
        # e.g. the spool was removed: initialise it as the package's postinst does
        install -d -o sgeadmin -g sgeadmin "$SGE_SPOOL/spooldb"
        runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
            "$SGE_ROOT" "$SGE_CELL" "$SGE_SPOOL/spooldb" sgeadmin >>"$LOGDIR/sge-init.log" 2>&1 ||
            fail sge "init_cluster failed" "$LOGDIR/sge-init.log"
    fi
    if ((aliases_changed)); then
        stop_daemon "$SGE_EXECD_PID" sge_execd
        stop_daemon "$SGE_QMASTER_PID" sge_qmaster
    fi
    if ! pid_alive "$SGE_QMASTER_PID" sge_qmaster >/dev/null || ! sge_qmaster_ok; then
        stop_daemon "$SGE_QMASTER_PID" sge_qmaster
        launch runuser -u sgeadmin -- /usr/lib/gridengine/sge_qmaster >>"$LOGDIR/sge_qmaster.out" 2>&1 ||
            fail sge "sge_qmaster did not start" "$LOGDIR/sge_qmaster.out" "$SGE_QMASTER_LOG"
        wait_until 30 sge_qmaster_ok || fail sge "sge_qmaster does not answer" "$SGE_QMASTER_LOG"
    fi
    sge_configure >>"$LOGDIR/sge-config.log" 2>&1 ||
        fail sge "configuring the cluster failed" "$LOGDIR/sge-config.log" "$SGE_QMASTER_LOG"
    if ! pid_alive "$SGE_EXECD_PID" sge_execd >/dev/null; then
        stop_daemon "$SGE_EXECD_PID" sge_execd
        launch /usr/lib/gridengine/sge_execd >>"$LOGDIR/sge_execd.out" 2>&1 ||
            fail sge "sge_execd did not start" "$LOGDIR/sge_execd.out" "$SGE_EXECD_LOG"
    fi
    if ! wait_until 30 sge_queue_ok; then
        # e.g. a queue instance left in error state (E) by an earlier run
        "$SGE_BIN"/qmod -c "$SGE_QUEUE@$HOST" >/dev/null 2>&1 || true
        "$SGE_BIN"/qmod -e "$SGE_QUEUE@$HOST" >/dev/null 2>&1 || true
        wait_until 30 sge_queue_ok ||
            fail sge "queue $SGE_QUEUE@$HOST is in state '$(sge_queue_state)'" "$SGE_QMASTER_LOG" "$SGE_EXECD_LOG"
    fi
    local out
    out=$(cd /tmp && timeout 60 "$SGE_BIN"/qsub -sync y -b y -j y -o /dev/null -N cj-health true 2>&1) ||
        fail sge "trivial qsub -sync y job failed: $out" "$SGE_QMASTER_LOG" "$SGE_EXECD_LOG"
    sge_section
    say "sge: started in $(($(now_ms) - t0))ms (queue $SGE_QUEUE@$HOST, $NCPU slots)"
}

sge_stop() {
    stop_daemon "$SGE_EXECD_PID" sge_execd
    stop_daemon "$SGE_QMASTER_PID" sge_qmaster
    drop_section sge
    say "sge: stopped"
}

sge_status() {
    if sge_healthy; then
        echo "sge: running (queue $SGE_QUEUE@$HOST)"
    else
        echo "sge: NOT healthy (qmaster/execd down or queue $SGE_QUEUE@$HOST in state '$(sge_queue_state 2>/dev/null)')"
        return 1
    fi
}

# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# services ARG...: the services named (validated, "all" expanded, in a fixed order)
services() {
    local want=" " s
    (($#)) || set -- all
    for s in "$@"; do
        case $s in
        all) want+="${ALL_SERVICES[*]} " ;;
        slurm | sshd | sge | pbs) want+="$s " ;;
        ssh) want+="sshd " ;;
        *) say "unknown service '$s' (use: all slurm sshd sge pbs)" && exit 2 ;;
        esac
    done
    for s in "${ALL_SERVICES[@]}"; do
        [[ $want == *" $s "* ]] && echo "$s"
    done
}

main() {
    (($#)) || usage
    local cmd=$1 svc rc=0
    shift
    local svcs
    mapfile -t svcs < <(services "$@")
    ((${#svcs[@]})) || exit 2
    [[ $cmd == status ]] || [[ $(id -u) == 0 ]] || {
        say "must run as root"
        exit 1
    }
    mkdir -p "$STATE" "$LOGDIR" "$RUNDIR"
    # One invocation at a time (e.g. several pytest workers calling ensure()).
    exec 9>"$STATE/.lock"
    flock 9
    case $cmd in
    install)
        for svc in "${svcs[@]}"; do "${svc}_install"; done
        ;;
    start)
        for svc in "${svcs[@]}"; do "${svc}_start"; done
        ;;
    restart)
        local had_pbs=0
        [[ -f $STATE/sections/pbs.json ]] && had_pbs=1
        for svc in "${svcs[@]}"; do
            if [[ $svc == sshd ]]; then
                sshd_restart
            else
                "${svc}_stop"
                "${svc}_start"
            fi
        done
        # stopping slurm withdraws pbs (it submits to slurm): bring it back
        if ((had_pbs)) && [[ ! -f $STATE/sections/pbs.json ]]; then pbs_start; fi
        ;;
    stop)
        # pbs first (it uses slurm), then the others
        for svc in "${svcs[@]}"; do "${svc}_stop"; done
        ;;
    status)
        for svc in "${svcs[@]}"; do "${svc}_status" || rc=1; done
        exit $rc
        ;;
    *) usage ;;
    esac
}

main "$@"
