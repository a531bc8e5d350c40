"""The scheduler contract, and everything schedulers share.

A scheduler turns a :class:`JobSpec` into a job script, submits it, reports the state of many
jobs in one call, and cancels. It never opens a connection itself: it is given a
:class:`~clusterjupyter.transports.Transport` and runs every command through it
(:meth:`Scheduler.call`). Scheduler differences are data: the directive prefix, the commands,
the state table; a concrete scheduler adds a few short hooks:

* :meth:`directives` — resource requests as directive lines (without the prefix);
* :meth:`submit` — submit the script, return the native job id (called exactly once per job:
  a failed submission is never retried, so no job is ever submitted twice);
* :meth:`status` — the native state of many jobs in one scheduler call; a job the scheduler
  no longer knows is simply absent from the answer;
* :meth:`cancel`, and optionally :meth:`queue`, :meth:`hold`, :meth:`release`.

The final state of a job comes from the runner's exit file first (see :func:`final_state`);
scheduler accounting only explains deaths the runner could not report (timeout, OOM, node
failure).
"""

from __future__ import annotations

import abc
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from typing import Any, ClassVar, Sequence

from ..errors import ClusterError
from ..jobdir import SECRET_ENV, JobPaths
from ..resources import Resources
from ..states import JobState
from ..transports.base import Completed, Transport


@dataclass
class JobSpec:
    """Everything a scheduler needs to write and submit one job's script."""

    job_id: str
    name: str
    paths: JobPaths
    resources: Resources
    python: str                       # interpreter command (shell words, from the profile)
    secret_path: str                  # on the target machine
    prelude: list[str] = field(default_factory=list)   # shell lines run first (module load …)
    env: dict[str, str] = field(default_factory=dict)
    pythonpath: str | None = None     # where the runner's package was shipped, if it was


@dataclass
class NativeStatus:
    """One job as the scheduler sees it."""

    state: JobState
    reason: str = ""                  # queue reason while pending; exit reason when final
    exit_code: int | None = None
    native: str = ""                  # the scheduler's own state word
    host: str = ""
    never: bool = False               # pending, and the scheduler says it can never start so


@dataclass
class QueueEntry:
    """One line of the scheduler's queue."""

    native_id: str
    name: str
    user: str
    state: JobState
    native: str
    reason: str = ""
    elapsed: str = ""
    partition: str = ""
    nodes: str = ""


class Scheduler(abc.ABC):
    """Base of every scheduler; see the module docstring for the contract."""

    name: ClassVar[str]
    #: prefix of a directive line in the job script ("#SBATCH"); empty if none
    directive_prefix: ClassVar[str] = ""
    #: native state word -> JobState
    state_map: ClassVar[dict[str, JobState]] = {}
    #: regular expression finding the job id in the submit command's output
    job_id_regexp: ClassVar[str] = r"(?P<job_id>\d+)"
    #: seconds between scheduler queries while jobs are active (the monitor adapts it)
    poll_interval: ClassVar[float] = 2.0
    #: commands issued through :meth:`call` so far (read for the profile's metrics)
    commands: int = 0
    #: template file (package data in schedulers/templates/)
    template_name: ClassVar[str] = "job.sh"

    def __init__(self, transport: Transport, options: dict[str, Any] | None = None):
        self.transport = transport
        self.options = dict(options or {})

    # -- the job script ---------------------------------------------------------------------
    def directives(self, spec: JobSpec) -> list[str]:
        """Directive lines (without prefix) for ``spec``'s resources."""
        return list(spec.resources.directives)

    def render(self, spec: JobSpec) -> str:
        """The job script for ``spec``; every value that reaches the shell is quoted."""
        template = importlib_resources.files(__package__).joinpath(
            "templates", self.template_name).read_text()
        lines = [f"{self.directive_prefix} {d}".rstrip() for d in self.directives(spec)] \
            if self.directive_prefix else []
        env = dict(spec.env)
        env[SECRET_ENV] = spec.secret_path
        if spec.pythonpath:
            env["PYTHONPATH"] = spec.pythonpath + ":${PYTHONPATH:-}"
        exports = []
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ClusterError(f"invalid environment variable name {key!r}")
            if key == "PYTHONPATH" and spec.pythonpath:
                exports.append(f'export PYTHONPATH={shlex.quote(spec.pythonpath)}'
                               '"${PYTHONPATH:+:$PYTHONPATH}"')
            else:
                exports.append(f"export {key}={shlex.quote(value)}")
        return template.format(
            directives="\n".join(lines),
            job_id=spec.job_id,
            name=_comment_safe(spec.name),
            prelude="\n".join(spec.prelude),
            exports="\n".join(exports),
            job_dir=shlex.quote(spec.paths.dir),
            python=spec.python,
            wrap=self.wrap(spec),
        )

    def wrap(self, spec: JobSpec) -> str:
        """Words placed before the interpreter in the script (e.g. a time limit wrapper)."""
        return ""

    # -- operations -------------------------------------------------------------------------
    def call(self, argv: Sequence[str], *, input: bytes | None = None,
             timeout: float | None = 60, check: bool = True, retry: bool = False) -> Completed:
        """Run a scheduler command through the transport (the single seam for every command).
        ``retry``: the command is idempotent (queries, cancel) and may be repeated after a
        reconnection. The ``command_env`` option (a table) is set for the command."""
        env = self.options.get("command_env") or {}
        if env:
            if not isinstance(env, dict) or not all(
                    re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) for k in env):
                raise ClusterError(f"{self.name}: scheduler option command_env must be a table "
                                   'of environment variables, e.g. {SGE_ROOT = "/opt/sge"}')
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        self.commands += 1
        return self.transport.run(argv, input=input, timeout=timeout, check=check, retry=retry)

    def command(self, name: str) -> str:
        """The program to run for the scheduler command ``name`` ("qsub"): the option of that
        name if the profile sets one, else ``name`` in the ``bin_dir`` option, else ``name``."""
        if self.options.get(name):
            return str(self.options[name])
        bin_dir = self.options.get("bin_dir")
        return posixpath.join(str(bin_dir), name) if bin_dir else name

    def call_once(self, job_dir: str, argv: Sequence[str],
                  timeout: float | None = 150) -> Completed:
        """Run ``argv`` (a submit command) at most once per job directory, whatever the network.

        A marker directory made atomically in ``job_dir`` lets exactly one attempt run the
        command, shielded from hang-ups; its output and exit code are kept there. Any later
        attempt (a retry after a dropped connection) waits for and reports that same outcome,
        so a submission that may or may not have reached the cluster is never duplicated.
        """
        return self.call(["sh", "-c", _ONCE, "sh", job_dir, *argv], timeout=timeout,
                         retry=True)

    def parse_job_id(self, text: str) -> str:
        m = re.search(self.job_id_regexp, text)
        if not m:
            raise ClusterError(f"{self.name}: could not find a job id in the submit output: "
                               f"{text.strip()[:500]!r}")
        return m.group("job_id")

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> str:
        """Submit the job whose script is at ``spec.paths.script``; return the native id."""

    @abc.abstractmethod
    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        """Native status of the given jobs in one query (``job_ids`` are ours, same order)."""

    @abc.abstractmethod
    def cancel(self, native_ids: Sequence[str]) -> None:
        """Ask the scheduler to stop these jobs."""

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        """The scheduler's queue (this user's jobs unless ``all_users``)."""
        raise ClusterError(f"the {self.name} scheduler has no queue to show")

    def hold(self, native_id: str) -> None:
        raise ClusterError(f"the {self.name} scheduler cannot hold jobs")

    def release(self, native_id: str) -> None:
        raise ClusterError(f"the {self.name} scheduler cannot release jobs")

    def map_state(self, native: str) -> JobState:
        word = native.strip().split()[0].rstrip("+") if native.strip() else ""
        return self.state_map.get(word.upper(), JobState.LOST if not word else JobState.RUNNING)


#: ``sh -c`` script behind :meth:`Scheduler.call_once` ($1 = job dir, then the command)
_ONCE = """d="$1/.submit"; shift
if mkdir "$d" 2>/dev/null; then
  trap "" HUP PIPE
  "$@" >"$d/out" 2>"$d/err" </dev/null
  echo $? >"$d/rc.tmp" && mv -f "$d/rc.tmp" "$d/rc"
fi
i=0
until [ -e "$d/rc" ]; do i=$((i+1)); [ $i -gt 1200 ] && exit 75; sleep 0.1; done
cat "$d/out"; cat "$d/err" >&2; exit "$(cat "$d/rc")"
"""


def _comment_safe(text: str) -> str:
    return re.sub(r"[^\w.,:+=@/ -]", "_", text)[:120]


def final_state(runner: dict | None, native: NativeStatus | None,
                cancel_requested: bool = False) -> tuple[JobState, str, int | None]:
    """Decide a finished job's state from the runner's exit file and the scheduler's view.

    The runner's word is final for a cell that completed or raised. When the runner was killed
    (or never wrote its file) the scheduler explains why: timeout, out of memory, node failure.
    """
    if runner is not None:
        state = JobState.parse(runner.get("state", "failed"))
        code = runner.get("exit_code")
        reason = runner.get("reason", "")
        if state is JobState.COMPLETED:
            return state, "", code
        if runner.get("cell_error"):
            if "MemoryError" in reason:
                return JobState.OUT_OF_MEMORY, reason, code
            return JobState.FAILED, reason, code
        if cancel_requested:
            return JobState.CANCELLED, "cancelled by the user", code
        if native is not None and native.state in (JobState.TIMEOUT, JobState.OUT_OF_MEMORY):
            return native.state, native.reason or reason, code
        # the runner saw what stopped it (a signal, a broken job directory): its word stands
        return state, reason, code
    if native is not None and native.state.final:
        # (COMPLETED too: a scheduler that cannot tell how a job ended, e.g. PBS wrappers
        # without exit_status, says so for a job cancelled before it started)
        if cancel_requested and native.state in (JobState.CANCELLED, JobState.FAILED,
                                                 JobState.COMPLETED):
            return JobState.CANCELLED, "cancelled by the user", native.exit_code
        state = native.state
        reason = native.reason
        if state is JobState.COMPLETED:
            # the scheduler says fine, yet the runner left no exit file: it never really ran
            state, reason = JobState.FAILED, (reason or "the job ended without running the cell "
                                              "(see the scheduler log)")
        return state, reason, native.exit_code
    if cancel_requested:
        return JobState.CANCELLED, "cancelled by the user", None
    return JobState.LOST, ("the scheduler no longer knows the job and it left no exit file "
                           "(see the scheduler log)"), None
