# shellcheck shell=bash
# Shared helpers of scripts/testclusters.sh: processes, files, Debian packages, clusters.json.
# Sourced (not run); expects STATE, LOGDIR and RUNDIR to be set.

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
# configuration files from templates (render: template.sh)
# ----------------------------------------------------------------------------

# rendered TEMPLATE [NAME=VALUE]...: the rendered template; exit 1 if it cannot be rendered
rendered() { render "$@" || fail config "cannot render $1"; }

# conf_current FILE TEMPLATE [NAME=VALUE]...: does FILE hold the rendered TEMPLATE?
conf_current() {
    local file=$1
    shift
    [[ -f $file ]] && cmp -s <(rendered "$@") "$file"
}

# write_conf FILE MODE TEMPLATE [NAME=VALUE]...: write the rendered TEMPLATE to FILE;
# return 0 if FILE changed.  Nothing is written if the template cannot be rendered.
write_conf() {
    local file=$1 mode=$2 text
    shift 2
    text=$(rendered "$@" && echo .) || exit 1
    printf '%s' "${text%.}" | write_if_changed "$file" "$mode"
}
