"""Building a synced environment on the cluster, on the login host or as a job, followed.

The build is one POSIX shell script (:data:`BUILD`) run in the environment's directory after the
profile's prelude and environment variables. It writes everything to ``build.log`` there (kept:
``%cluster env list`` and the health check show it), ``.complete`` last, ``.failed`` when a
step fails. The profile's ``env_build`` says where it runs:

* ``"login"`` (default): a detached process on the login host (it survives the kernel); it
  writes its host, pid and process group to ``build.pid``, so that a sync can tell a build
  that goes on from one whose process died (:func:`builder`);
* ``"job"``: a job of the profile's scheduler with the profile's default resources (for
  clusters whose login hosts forbid heavy work, or whose compute nodes differ). Its id is kept
  in ``job.id``; the scheduler's own output goes to ``jobs/build/scheduler.log``.

:func:`follow` shows the log's new lines with the time elapsed while it builds, a line when
nothing was written for a while, and for a job its queue state; a job that ends, or a
login-host process that dies, without ``.complete`` fails with the log's tail (and the
scheduler's reason).
"""

from __future__ import annotations

import posixpath
import shlex
import time
from typing import Any, Callable, NamedTuple

from . import envprobe
from .errors import ClusterError
from .jobdir import JobPaths
from .schedulers import JobSpec

MARKER = ".complete"
FAILED = ".failed"
LOG = "build.log"
JOB_ID = "job.id"
#: where a build may run (profile option ``env_build``)
BUILD_MODES = ("login", "job")
#: seconds without a new log line before a "still building" line
QUIET = 30.0
#: $1 = environment directory, $2 = base interpreter, $3 = Python minor, $4 = online|offline
BUILD = r"""
set -e
dir=$1; base=$2; minor=$3; offline=$4
cd "$dir"
trap '[ -e .complete ] || touch .failed' EXIT
[ ! -f plan.txt ] || sed 's/^/clusterjupyter: plan: /' plan.txt
py=$base
if ! "$base" -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != sys.argv[1])' "$minor" \
    && command -v "python$minor" >/dev/null 2>&1; then py=$(command -v "python$minor"); fi
set --
[ "$offline" != offline ] || set -- --no-index --find-links wheels
if command -v uv >/dev/null 2>&1; then
  echo "clusterjupyter: uv venv --python $py"
  uv venv --python "$py" venv
  uv pip install --python venv/bin/python "$@" -r requirements.txt
else
  echo "clusterjupyter: $py -m venv, pip install $*"
  "$py" -m venv venv
  venv/bin/python -m pip install --disable-pip-version-check --no-input "$@" -r requirements.txt
fi
venv/bin/python -c "import sys; print('clusterjupyter: built', sys.version.split()[0])"
touch .complete
"""
_WHERE = 'echo "clusterjupyter: build on $(hostname)' + '{what}, $(date -u +%FT%TZ)"'
#: the login-host builder records its host, pid and process group ($1: the environment's
#: directory) so that a sync can tell a build that goes on from one whose process died
_LOGIN = _WHERE.format(what=", process $$") + (
    '\nprintf "%s %s %s\\n" "$(hostname)" $$ "$(ps -o pgid= -p $$ 2>/dev/null | tr -d " ")" '
    '>"$1/build.pid"')
BUILDER = "build.pid"
#: $1 = environment directory. Prints ``alive|dead|elsewhere|unknown|ended HOST PID``. A dead
#: builder (no such process, or its pid now another program's) without .complete nor .failed:
#: what it left running (its process group) is stopped, the log says so and .failed is
#: written, so that the next sync builds it again.
_CHECK = r"""
d=$1; host=; pid=; pgid=
[ ! -r "$d/build.pid" ] || read -r host pid pgid < "$d/build.pid"
[ -n "$pid" ] || { echo unknown; exit 0; }
[ "$host" = "$(hostname)" ] || { echo elsewhere "$host" "$pid"; exit 0; }
if kill -0 "$pid" 2>/dev/null; then
  if [ ! -r "/proc/$pid/cmdline" ] || tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$d"
  then echo alive "$host" "$pid"; exit 0; fi
elif [ "$pgid" = "$pid" ] && kill -0 "-$pid" 2>/dev/null; then
  kill -TERM "-$pid" 2>/dev/null
  i=0; while kill -0 "-$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "-$pid" 2>/dev/null
fi
if [ -e "$d/.complete" ] || [ -e "$d/.failed" ]; then echo ended "$host" "$pid"; exit 0; fi
echo "clusterjupyter: the build's process $pid on $host is gone without finishing" \
  "(killed?), $(date -u +%FT%TZ); marked failed" >>"$d/build.log"
: >"$d/.failed"
echo dead "$host" "$pid"
"""
_JOB = _WHERE.format(what=", job ${SLURM_JOB_ID:-${JOB_ID:-${PBS_JOBID:-?}}}")


class BuildError(ClusterError):
    """The environment's build failed or did not finish (its log says why)."""


def mode(profile: Any) -> str:
    return getattr(profile, "env_build", "") or "login"


def start(backend: Any, transport: Any, d: str, base: str, minor: str, offline: bool,
          say: Callable[[str], None]) -> str | None:
    """Start the build of the environment directory ``d`` (its ``requirements.txt`` written);
    return the job's native id when it runs as a job."""
    profile = backend.profile
    args = [d, base, minor, "offline" if offline else "online"]
    setup = envprobe.launch_lines(profile)[:-1]
    log = posixpath.join(d, LOG)
    if mode(profile) == "login":
        transport.spawn(["sh", "-c", "\n".join([_LOGIN, *setup, BUILD]), "sh", *args], log)
        return None
    sched = backend.scheduler
    paths = JobPaths(d, "build")
    spec = JobSpec(job_id="build", name=f"env-{posixpath.basename(d)}", paths=paths,
                   resources=profile.default_resources, python=base, secret_path="")
    directives = [f"{sched.directive_prefix} {x}".rstrip() for x in sched.directives(spec)] \
        if sched.directive_prefix else []
    script = "\n".join(["#!/bin/sh", *directives, f"exec >>{shlex.quote(log)} 2>&1", _JOB,
                        *setup, f"set -- {shlex.join(args)}", BUILD])
    transport.makedirs(paths.dir)
    transport.write(paths.script, script.encode(), 0o700)
    native = sched.submit(spec)
    transport.write(posixpath.join(d, JOB_ID), native.encode())
    say(f"the build runs as {sched.name} job {native}")
    return native


class Builder(NamedTuple):
    """What became of a login-host build's process (:data:`_CHECK`)."""

    state: str          # alive | dead | elsewhere | unknown | ended
    host: str = ""
    pid: str = ""

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}"


def builder(transport: Any, d: str) -> Builder:
    """Whether the process building ``d`` on the login host still runs; a dead one's build is
    marked failed (see :data:`_CHECK`)."""
    done = transport.shell(_CHECK, d, check=False)
    words = (done.stdout.split() or ["unknown"])[:3]
    return Builder(*words) if words[0] in ("alive", "dead", "elsewhere", "ended") \
        else Builder("unknown")


def job_of(transport: Any, d: str) -> str | None:
    """The native id of the job building ``d``, if it was built as a job."""
    try:
        return transport.read(posixpath.join(d, JOB_ID)).decode().strip() or None
    except OSError:
        return None


def follow(backend: Any, transport: Any, d: str, say: Callable[[str], None],
           timeout: float = 3600, poll: float = 1.0, native: str | None = None) -> None:
    """Show the build's progress until ``.complete`` (return) or a failure (ClusterError with
    the log's tail). ``native``: the job building it."""
    log, marker, failed = (posixpath.join(d, n) for n in (LOG, MARKER, FAILED))
    t0 = time.monotonic()
    offset, said, seen = 0, t0, ""
    next_query, watched = t0, ""
    while True:
        done = transport.existing([marker, failed])
        try:
            chunk = transport.read_from(log, offset)
        except OSError:
            chunk = b""
        offset += len(chunk)
        now = time.monotonic()
        for line in chunk.decode(errors="replace").splitlines():
            if line.strip():
                say(f"  [{now - t0:5.0f} s] {line.rstrip()[:200]}")
                said = now
        if marker in done:
            return
        if failed in done:
            raise BuildError(f"the environment build failed on {transport.where}; its log "
                               f"({log}) ends with:\n{transport.tail(log, 30)}")
        if now >= next_query:
            next_query = now + max(poll, 3.0)
            if native:
                seen = _job_progress(backend, transport, d, native, seen, say)
            else:
                watched = _watch(transport, d, watched, say)
        if now - said >= QUIET:
            say(f"  [{now - t0:5.0f} s] still building" + (f" (job {native}: {seen})"
                                                          if native and seen else ""))
            said = now
        if now - t0 > timeout:
            raise BuildError(f"the environment build did not finish in {timeout:.0f} s; it "
                               f"goes on there (log: {log})")
        time.sleep(poll)


def _watch(transport: Any, d: str, watched: str, say: Callable[[str], None]) -> str:
    """Check the login-host builder; raise when it died without finishing."""
    b = builder(transport, d)
    if b.state == "elsewhere" and watched != "elsewhere":
        say(f"  the build's {b} is not on the host this connection reaches "
            f"({transport.where}): it cannot be watched")
    if b.state == "dead":
        log = posixpath.join(d, LOG)
        raise BuildError(f"the environment build's {b} ended without finishing it (killed, "
                         f"or out of memory?); the next sync builds it again. Its log ({log}) "
                         f"ends with:\n{transport.tail(log, 30)}")
    return b.state


def _job_progress(backend: Any, transport: Any, d: str, native: str, seen: str,
                  say: Callable[[str], None]) -> str:
    """Say the build job's state when it changes; raise when it ended without the marker."""
    try:
        st = backend.scheduler.status([native], ["build"]).get(native)
    except ClusterError as e:         # a busy controller: ask again at the next round
        say(f"  build job {native}: the scheduler did not answer ({str(e)[:120]})")
        return seen
    gone = st is None and bool(seen) and not seen.startswith("not listed")
    if not gone and (st is None or not st.state.final):
        word = st.state.value if st else "not listed"
        text = word + (f", {st.reason}" if st and st.reason else "") \
            + (f", on {st.host}" if st and st.host else "")
        if word != seen.split(",")[0]:
            say(f"  build job {native}: {text}")
        return text
    # the job ended: the marker is written before its script exits (wait once for a slow
    # shared file system)
    time.sleep(2.0)
    if posixpath.join(d, MARKER) in transport.existing([posixpath.join(d, MARKER)]):
        return "ended"
    log = posixpath.join(d, LOG)
    transport.write(posixpath.join(d, FAILED), b"")      # a later sync builds it again
    ended = f"ended {st.state.value}" + (f" ({st.reason})" if st.reason else "") if st \
        else "is no longer known to the scheduler"
    raise BuildError(f"the build job {native} {ended} without "
                       f"finishing the environment on {transport.where}; its log ({log}) ends "
                       f"with:\n{transport.tail(log, 30)}\n(the scheduler's own output: "
                       f"{JobPaths(d, 'build').scheduler_log})")
