# shellcheck shell=bash
# Grid Engine 8.1.9 (service "sge"): sge_qmaster and sge_execd on this host, queue all.q.
# Sourced by scripts/testclusters.sh.

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

# sge_words FILE: a qconf dump with continued lines joined and blanks squeezed, to compare two
# (qconf pads and wraps its columns otherwise than sge_modify writes them)
sge_words() {
    awk '{ line = line " " $0 } /\\$/ { sub(/\\$/, "", line); next } { $0 = line; line = ""; $1 = $1; print }' "$1"
}

# sge_modify KIND NAME TEMPLATE [NAME=VALUE]...: set the attributes listed in the rendered
# TEMPLATE ("attribute value" a line) on a configuration object without an editor: dump it
# (qconf -sKIND NAME), replace the lines of those attributes, load it back (qconf -MKIND FILE)
# if anything changed.  Continuation lines ("\" at the end) of a replaced attribute are dropped
# with it.
sge_modify() {
    local kind=$1 name=$2 dir f
    shift 2
    dir=$(mktemp -d)
    # -Mconf takes the configuration's name from the file's name ("global").
    f=$dir/${name:-config}
    # shellcheck disable=SC2086  # an empty NAME (scheduler config) is no argument
    if ! "$SGE_BIN"/qconf "-s$kind" $name >"$f.orig" || ! render "$@" >"$dir/changes"; then
        rm -rf "$dir"
        return 1
    fi
    awk '
        FILENAME == ARGV[1] { k = $1; sub(/^[^ \t]+[ \t]+/, ""); val[k] = $0; next }
        skip { skip = /\\$/; next }
        { split($0, w, /[ \t]+/) }
        (w[1] in val) { printf "%-30s %s\n", w[1], val[w[1]]; done[w[1]] = 1; skip = /\\$/; next }
        { print }
        END { for (k in val) if (!(k in done)) printf "%-30s %s\n", k, val[k] }
    ' "$dir/changes" "$f.orig" >"$f"
    if ! cmp -s <(sge_words "$f") <(sge_words "$f.orig"); then
        "$SGE_BIN"/qconf "-M$kind" "$f" >/dev/null || { rm -rf "$dir"; return 1; }
    fi
    rm -rf "$dir"
}

# sge_add SHOW ADD TEMPLATE [NAME=VALUE]...: unless `qconf SHOW` finds the object, add it from
# the rendered TEMPLATE with `qconf ADD FILE`.
sge_add() {
    local show=$1 add=$2 dir
    shift 2
    # shellcheck disable=SC2086  # SHOW is an option and its argument
    "$SGE_BIN"/qconf $show >/dev/null 2>&1 && return 0
    dir=$(mktemp -d)
    if ! render "$@" >"$dir/${1##*/}" || ! "$SGE_BIN"/qconf "$add" "$dir/${1##*/}" >/dev/null; then
        rm -rf "$dir"
        return 1
    fi
    rm -rf "$dir"
}

# sge_configure: the one-node cluster's configuration (idempotent), from templates/sge/.
sge_configure() {
    local t=$TEMPLATES/sge dir
    sge_modify conf global "$t/global" || return 1
    sge_modify sconf "" "$t/scheduler" || return 1
    "$SGE_BIN"/qconf -ss 2>/dev/null | grep -qx "$HOST" || "$SGE_BIN"/qconf -as "$HOST" >/dev/null || return 1
    sge_add "-se $HOST" -Ae "$t/exechost" HOST="$HOST" || return 1
    sge_add "-shgrp @allhosts" -Ahgrp "$t/allhosts" HOST="$HOST" || return 1
    sge_add "-sp smp" -Ap "$t/smp" || return 1
    if ! "$SGE_BIN"/qconf -sq "$SGE_QUEUE" >/dev/null 2>&1; then
        # from Grid Engine's template queue, minus its PEs that do not exist here
        dir=$(mktemp -d)
        "$SGE_BIN"/qconf -sq | awk -v q="$SGE_QUEUE" -v h="$HOST" '
            $1 == "qname" {print "qname " q; next}
            $1 == "hostlist" {print "hostlist " h; next}
            $1 == "pe_list" {print "pe_list smp"; next}
            {print}' >"$dir/$SGE_QUEUE"
        "$SGE_BIN"/qconf -Aq "$dir/$SGE_QUEUE" >/dev/null || { rm -rf "$dir"; return 1; }
        rm -rf "$dir"
    fi
    sge_modify q "$SGE_QUEUE" "$t/queue" SLOTS="$NCPU"
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
