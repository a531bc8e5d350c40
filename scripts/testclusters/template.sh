# shellcheck shell=bash
# render TEMPLATE [NAME=VALUE]...: print TEMPLATE with its placeholders filled in.
#
# Template syntax (one directive per line):
#   @NAME@                   replaced by VALUE (NAME: capitals, digits, underscores)
#   @if NAME / @else / @endif  the lines up to @else/@endif are kept only if NAME is set to
#                            something other than "" or "0" (the @else part otherwise); no nesting
#   @# comment               a note about the template, not written out
# A placeholder or @if without a value, or an unbalanced @if, is an error: nothing is printed
# and the exit code is 1.  Needs only a POSIX awk (mawk on Debian, also Binder's image).
# Sourced by scripts/testclusters.sh and binder/start.
render() {
    local template=$1 kv
    shift
    local values=()
    for kv in "$@"; do
        if [[ $kv != [A-Z_]*=* ]]; then
            printf 'render: bad argument %q (expected NAME=VALUE)\n' "$kv" >&2
            return 2
        fi
        values+=("CJ_TPL_$kv")
    done
    env "${values[@]}" awk -v template="$template" '
        function fail(msg) {
            printf "%s:%d: %s\n", template, FNR, msg > "/dev/stderr"
            failed = 1
            exit 1
        }
        function value(name) {
            if (!(("CJ_TPL_" name) in ENVIRON)) fail("no value for " name)
            return ENVIRON["CJ_TPL_" name]
        }
        /^@#/ { next }
        /^@if [A-Z_][A-Z0-9_]*$/ {
            if (inside) fail("nested @if")
            inside = 1
            v = value($2)
            keep = v != "" && v != "0"
            next
        }
        /^@else$/ { if (!inside) fail("@else without @if"); keep = !keep; next }
        /^@endif$/ { if (!inside) fail("@endif without @if"); inside = 0; next }
        inside && !keep { next }
        {
            line = $0
            done = ""
            while (match(line, /@[A-Z_][A-Z0-9_]*@/)) {
                done = done substr(line, 1, RSTART - 1) value(substr(line, RSTART + 1, RLENGTH - 2))
                line = substr(line, RSTART + RLENGTH)
            }
            out = out done line "\n"
        }
        END {
            if (failed) exit 1
            if (inside) fail("@if without @endif")
            printf "%s", out
        }
    ' "$template"
}
