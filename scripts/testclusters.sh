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
# One file per service next to this script, in testclusters/: slurm.sh (munge, slurmctld,
# slurmd), accounting.sh (MariaDB, slurmdbd), sge.sh, pbs.sh (Torque wrappers), sshd.sh; the
# helpers they share in lib.sh; the configuration files they write in templates/ (rendered by
# template.sh; templates/slurm.conf is also binder/start's).
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
PARTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/testclusters
TEMPLATES=$PARTS/templates

# shellcheck source=SCRIPTDIR/testclusters/template.sh
source "$PARTS/template.sh"
# shellcheck source=SCRIPTDIR/testclusters/lib.sh
source "$PARTS/lib.sh"
# shellcheck source=SCRIPTDIR/testclusters/accounting.sh
source "$PARTS/accounting.sh"
# shellcheck source=SCRIPTDIR/testclusters/slurm.sh
source "$PARTS/slurm.sh"
# shellcheck source=SCRIPTDIR/testclusters/pbs.sh
source "$PARTS/pbs.sh"
# shellcheck source=SCRIPTDIR/testclusters/sshd.sh
source "$PARTS/sshd.sh"
# shellcheck source=SCRIPTDIR/testclusters/sge.sh
source "$PARTS/sge.sh"

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
