# shellcheck shell=bash
# PBS (service "pbs"): Torque-compatible qsub/qstat/qdel (Perl wrappers over SLURM) from the
# slurm-wlm-torque package.  It conflicts with gridengine-client (both own
# /usr/bin/qsub), so it is unpacked into $STATE/torque, not installed.

TORQUE_DIR=$STATE/torque
TORQUE_BIN=$TORQUE_DIR/usr/bin

pbs_install() {
    slurm_install
    apt_install libslurm-perl libslurmdb-perl libswitch-perl patch
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
# commands must be found next to them (scancel: qdel of one array element).
pbs_link_slurm_commands() {
    local c
    for c in sbatch salloc srun scancel; do
        [[ -L $TORQUE_BIN/$c ]] || ln -sfn "/usr/bin/$c" "$TORQUE_BIN/$c"
    done
}

# Job arrays (qsub -t / -J, ID[N] in qstat and qdel): torque-arrays.patch, applied once.
TORQUE_PATCH=$(dirname "${BASH_SOURCE[0]}")/torque-arrays.patch
pbs_arrays_patched() { grep -q clusterjupyter-arrays "$TORQUE_BIN/qstat" 2>/dev/null; }
pbs_patch_arrays() {
    pbs_arrays_patched && return 0
    command -v patch >/dev/null || apt_install patch
    patch -d "$TORQUE_BIN" -p1 -N -s <"$TORQUE_PATCH" >>"$LOGDIR/apt.log" 2>&1 ||
        fail pbs "patching the wrappers for job arrays failed" "$LOGDIR/apt.log"
    say "pbs: job arrays added to the wrappers ($TORQUE_PATCH)"
}

pbs_qstat_ok() { PATH=$TORQUE_BIN:$PATH "$TORQUE_BIN/qstat" >/dev/null 2>&1; }

pbs_section() {
    set_section pbs "{\"bin_dir\": $(json_str "$TORQUE_BIN"), \"queue\": $(json_str "$SLURM_PARTITION")}"
}

pbs_start() {
    slurm_start
    if [[ -x $TORQUE_BIN/qsub && -f $STATE/sections/pbs.json ]] && pbs_arrays_patched &&
        [[ -L $TORQUE_BIN/scancel ]] && pbs_qstat_ok; then
        say "pbs: already available ($TORQUE_BIN)"
        pbs_section
        return 0
    fi
    pbs_install
    pbs_patch_arrays
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
