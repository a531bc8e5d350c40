# shellcheck shell=bash
# The test SLURM (service "slurm"): munged, slurmctld and slurmd on this host, partition
# "debug", accounting through accounting.sh.  Sourced by scripts/testclusters.sh.

SLURM_CONF_FILE=/etc/slurm/slurm.conf
SLURM_SPOOL=$STATE/slurm
SLURM_PARTITION=debug
SLURM_CLUSTER=cjtest
MUNGE_LOG=/var/log/munge/munged.log

slurm_install() {
    apt_install munge slurm-wlm "${ACCOUNTING_PACKAGES[@]}"
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

# slurm_conf_args: render arguments for slurm.conf (templates/slurm.conf, shared with binder/start)
slurm_conf_args() {
    local mem
    mem=$(slurm_memory_mb)
    SLURM_CONF_ARGS=("$TEMPLATES/slurm.conf"
        WRITTEN_BY="clusterjupyter scripts/testclusters.sh: a one-node test cluster."
        CLUSTER="$SLURM_CLUSTER" HOST="$HOST" SLURM_USER=root SPOOL="$SLURM_SPOOL"
        RUN="$RUNDIR" LOG="$LOGDIR" CPUS="$NCPU" MEMORY_MB="$mem" PARTITION="$SLURM_PARTITION"
        SLURMCTLD_PORT= SLURMD_PORT= MUNGE_SOCKET=
        MEMORY_LIMITS=1 DEF_MEM_PER_CPU=$((mem / NCPU)) ACCOUNTING=1)
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

# slurm_node_state: state of our node as sinfo sees it (idle, mixed, down*, ...)
slurm_node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1; }

slurm_node_up() {
    [[ $(slurm_node_state) =~ ^(idle|mixed|allocated|completing)$ ]]
}

slurm_all_alive() {
    munge_ok && accounting_alive &&
        pid_alive "$RUNDIR/slurmctld.pid" slurmctld >/dev/null &&
        pid_alive "$RUNDIR/slurmd.pid" slurmd >/dev/null
}

slurm_configs_current() {
    slurm_conf_args
    conf_current "$SLURM_CONF_FILE" "${SLURM_CONF_ARGS[@]}" &&
        conf_current "$SLURMDBD_CONF_FILE" "${SLURMDBD_CONF_ARGS[@]}"
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
    slurm_conf_args
    write_conf "$SLURM_CONF_FILE" 644 "${SLURM_CONF_ARGS[@]}" && changed=1
    write_conf "$SLURMDBD_CONF_FILE" 600 "${SLURMDBD_CONF_ARGS[@]}" && changed=1
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
    # (a machine in use: jobs recovered from the saved state may hold the node for a while)
    wait_until 30 test -e "$mark" || { slurm_node_busy && wait_until 120 test -e "$mark"; } ||
        fail slurm "trivial job $jobid did not run: $(squeue -h -j "$jobid" -o '%T %r' 2>&1)" "${SLURM_LOGS[@]}"
    rm -f "$mark"
    wait_until 20 slurm_sacct_has "$jobid" ||
        fail slurm "job $jobid not in sacct: $(sacct -X -n -j "$jobid" -o JobID,State,ExitCode 2>&1)" "${SLURM_LOGS[@]}"
}

# slurm_node_busy: do other jobs than the check job run on the node?
slurm_node_busy() { [[ -n $(squeue -h -t RUNNING,COMPLETING -w "$HOST" -o %i 2>/dev/null) ]]; }

slurm_sacct_has() { [[ $(sacct -X -n -P -j "$1" -o State 2>/dev/null) == COMPLETED* ]]; }

slurm_stop() {
    stop_daemon "$RUNDIR/slurmd.pid" slurmd
    stop_daemon "$RUNDIR/slurmctld.pid" slurmctld
    accounting_stop
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
