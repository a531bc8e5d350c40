"""The scheduler contract, and everything schedulers share.

A scheduler turns a :class:`JobSpec` into a job script, submits it, reports the state of many
jobs in one call, and cancels. It never opens a connection itself: it is given a
:class:`~clusterjupyter.transports.Transport` and runs every command through one seam,
:meth:`Scheduler.call`. Scheduler differences are data, declared on the class:

* ``operations`` — what each operation runs (``{"submit": ("sbatch", "--parsable"), …}``),
  resolved in one place (:meth:`Scheduler.argv`: a per-program option, else ``bin_dir``);
* ``option_help`` — the profile's ``scheduler_options`` it takes (any other is refused);
* ``directive_prefix``, ``job_id_regexp``, ``state_map`` and reason tables, ``cancel_gone``.

A concrete scheduler adds short hooks:

* :meth:`directives` — resource requests as directive lines (without the prefix);
* :meth:`submit` — submit the script, return the native job id (called exactly once per job:
  a failed submission is never retried, so no job is ever submitted twice);
* :meth:`status` — the native state of many jobs in one scheduler query; a job the scheduler
  no longer knows is simply absent from the answer. Each query is a command builder plus a
  *pure* parser of the command's output (module-level functions, tested on recorded output);
* optionally :meth:`queue`; :meth:`cancel`, :meth:`hold` and :meth:`release` run their
  ``operations`` entry by default.

The final state of a job comes from the runner's exit file first (see :func:`final_state`);
scheduler accounting only explains deaths the runner could not report (timeout, OOM, node
failure).
"""

from __future__ import annotations

import abc
import difflib
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from typing import Any, Callable, ClassVar, Sequence, Union

from ..errors import ClusterError, CommandError
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
    #: a sweep's job array: the element ids' 24-digit prefix (the script finds its element's
    #: directory from the scheduler's array index); empty for a single job
    array_prefix: str = ""


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
    #: what each operation runs: role ("submit", "status", "cancel", "hold", "release" …) ->
    #: program and fixed arguments; the program is resolved by :meth:`command`
    operations: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: this scheduler's own ``scheduler_options`` (name -> meaning); with ``operations``, the
    #: programs, ``bin_dir`` and ``command_env`` are options too (see :meth:`valid_options`)
    option_help: ClassVar[dict[str, str]] = {}
    #: text in a failed cancel's output that means the job had already ended or gone
    cancel_gone: ClassVar[str] = ""
    #: shell expression of a job array element's 0-based index (empty: no job arrays)
    array_index: ClassVar[str] = ""

    def __init__(self, transport: Transport, options: dict[str, Any] | None = None):
        self.transport = transport
        self.options = dict(options or {})
        check_options(self.name, self.options, self.valid_options())

    @classmethod
    def valid_options(cls) -> dict[str, str]:
        """Every option this scheduler takes, with what it means."""
        out: dict[str, str] = {}
        if cls.operations:
            out["bin_dir"] = "directory of the scheduler's commands (run by absolute path)"
            out["command_env"] = ("table of environment variables for the scheduler's commands "
                                  "(not the job's), e.g. {SGE_ROOT = \"/opt/sge\"}")
            for program in dict.fromkeys(argv[0] for argv in cls.operations.values()):
                out[program] = f"path of {program} (wins over bin_dir)"
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("option_help", {}))
            for option in vars(klass).get("options_not_taken", ()):
                out.pop(option, None)
        return out

    # -- the job script ---------------------------------------------------------------------
    def directives(self, spec: JobSpec) -> list[str]:
        """Directive lines (without prefix) for ``spec``'s resources."""
        return list(spec.resources.directives)

    def render(self, spec: JobSpec) -> str:
        """The job script for ``spec``; every value that reaches the shell is quoted."""
        template = (importlib_resources.files(__package__) / "templates"
                    / self.template_name).read_text()
        lines = [f"{self.directive_prefix} {d}".rstrip() for d in self.directives(spec)] \
            if self.directive_prefix else []
        env = dict(spec.env)
        env[SECRET_ENV] = spec.secret_path
        if spec.pythonpath:
            env["PYTHONPATH"] = spec.pythonpath + ":${PYTHONPATH:-}"
        exports = []
        job_dir = shlex.quote(spec.paths.dir)
        if spec.array_prefix:   # one script for every element: its directory from the index
            base = shlex.quote(posixpath.join(spec.paths.root, "jobs", spec.array_prefix))
            exports.append(f'CJ_JOB_DIR={base}"$(printf %08d "{self.array_index}")"')
            job_dir = '"$CJ_JOB_DIR"'
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
            job_dir=job_dir,
            python=spec.python,
            wrap=self.wrap(spec),
        )

    def wrap(self, spec: JobSpec) -> str:
        """Words placed before the interpreter in the script (e.g. a time limit wrapper)."""
        return ""

    # -- operations -------------------------------------------------------------------------
    def command(self, program: str) -> str:
        """Where ``program`` ("qsub") is: the option of that name if the profile sets one, else
        ``program`` in the ``bin_dir`` option, else ``program`` (found on ``PATH``)."""
        if self.options.get(program):
            return str(self.options[program])
        bin_dir = self.options.get("bin_dir")
        return posixpath.join(str(bin_dir), program) if bin_dir else program

    def argv(self, role: str, *args: str) -> list[str]:
        """The command line of the operation ``role`` (see ``operations``) with ``args``."""
        program, *fixed = self.operations[role]
        return [self.command(program), *fixed, *args]

    def call(self, argv: Sequence[str], *, tolerate: Tolerate = None,
             input: bytes | None = None, timeout: float | None = 60,
             retry: bool = False) -> Completed:
        """Run a scheduler command through the transport (the single seam for every command).

        A failed command raises :class:`SchedulerError` (the scheduler's message and the
        command, on one line) unless ``tolerate`` accepts the failure: ``True`` (any), a
        regular expression searched in its output, or a predicate of the :class:`Completed`;
        the caller then reads the failed result. ``retry``: the command is idempotent
        (queries, cancel) and may be repeated after a reconnection. The ``command_env``
        option (a table) is set for the command."""
        shown = [str(a) for a in argv]
        env = self.options.get("command_env") or {}
        if env:
            if not isinstance(env, dict) or not all(
                    re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) for k in env):
                raise ClusterError(f"{self.name}: scheduler option command_env must be a table "
                                   'of environment variables, e.g. {SGE_ROOT = "/opt/sge"}')
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        self.commands += 1
        done = self.transport.run(argv, input=input, timeout=timeout, check=False, retry=retry)
        if done.returncode != 0 and not tolerated(tolerate, done):
            raise SchedulerError(shown, done.returncode, done.stdout, done.stderr,
                                 self.transport.where)
        return done

    def call_once(self, job_dir: str, argv: Sequence[str],
                  timeout: float | None = 150) -> Completed:
        """Run ``argv`` (a submit command) at most once per job directory, whatever the network.

        A marker directory made atomically in ``job_dir`` lets exactly one attempt run the
        command, shielded from hang-ups; its output and exit code are kept there. Any later
        attempt (a retry after a dropped connection) waits for and reports that same outcome,
        so a submission that may or may not have reached the cluster is never duplicated.
        A refusal names ``argv``, not the wrapper around it.
        """
        done = self.call(["sh", "-c", _ONCE, "sh", job_dir, *argv], timeout=timeout,
                         retry=True, tolerate=True)
        if done.returncode != 0:
            raise SchedulerError(list(argv), done.returncode, done.stdout, done.stderr,
                                 self.transport.where)
        return done

    def parse_job_id(self, text: str) -> str:
        m = re.search(self.job_id_regexp, text)
        if not m:
            raise ClusterError(f"{self.name}: could not find a job id in the submit output: "
                               f"{text.strip()[:500]!r}")
        return m.group("job_id")

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> str:
        """Submit the job whose script is at ``spec.paths.script``; return the native id."""

    def submit_array(self, spec: JobSpec, indices: Sequence[int], max_running: int) -> str:
        """Submit ``spec``'s script (rendered with ``array_prefix``) once as a job array of
        the elements ``indices``, at most ``max_running`` at a time; return the array's id."""
        raise ClusterError(f"the {self.name} scheduler has no job arrays for sweeps yet")

    def element_native_id(self, array_id: str, index: int) -> str:
        """The native id of element ``index`` of the array ``array_id``."""
        return f"{array_id}_{index}"

    def array_of(self, native_id: str) -> str:
        """The array an element's native id belongs to (what cancels the whole array)."""
        return native_id.rsplit("_", 1)[0]

    @abc.abstractmethod
    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        """Native status of the given jobs in one query (``job_ids`` are ours, same order)."""

    def cancel(self, native_ids: Sequence[str]) -> None:
        """Ask the scheduler to stop these jobs (one that already ended is no error)."""
        if native_ids:
            self.call(self.argv("cancel", *native_ids), retry=True,
                      tolerate=self.cancel_gone or None)

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        """The scheduler's queue (this user's jobs unless ``all_users``)."""
        raise ClusterError(f"the {self.name} scheduler has no queue to show")

    def hold(self, native_id: str) -> None:
        """Keep a pending job from starting until :meth:`release`."""
        if "hold" not in self.operations:
            raise ClusterError(f"the {self.name} scheduler cannot hold jobs")
        self.call(self.argv("hold", native_id), retry=True)

    def release(self, native_id: str) -> None:
        """Let a held job start."""
        if "release" not in self.operations:
            raise ClusterError(f"the {self.name} scheduler cannot release jobs")
        self.call(self.argv("release", native_id), retry=True)

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


#: what :meth:`Scheduler.call` may accept of a failed command
Tolerate = Union[None, bool, str, "re.Pattern[str]", Callable[[Completed], bool]]


def tolerated(tolerate: Tolerate, done: Completed) -> bool:
    """Does ``tolerate`` accept the failed command ``done``?"""
    if tolerate is None or tolerate is False:
        return False
    if tolerate is True:
        return True
    if callable(tolerate):
        return bool(tolerate(done))
    return re.search(tolerate, done.stdout + "\n" + done.stderr) is not None


class SchedulerError(CommandError):
    """A scheduler command failed or refused a request: the scheduler's own message first,
    then the command, on one line."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str,
                 where: str = "") -> None:
        super().__init__(argv, returncode, stdout, stderr, where)
        self.args = (refusal_text(self.argv, returncode, stdout, stderr, where),)

    def __str__(self) -> str:
        return str(self.args[0])


def refusal_text(argv: Sequence[str], returncode: int, stdout: str, stderr: str,
                 where: str = "") -> str:
    """``sbatch: error: … (sbatch --parsable job.sh, exit code 1)``: one line."""
    lines = [ln.strip() for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()]
    message = "; ".join(dict.fromkeys(lines[-4:])) or "failed without a message"
    loc = f", on {where}" if where else ""
    return f"{message} ({shlex.join(argv)}, exit code {returncode}{loc})"


def check_options(scheduler: str, options: dict[str, Any], valid: dict[str, str]) -> None:
    """Refuse an option ``valid`` does not list, naming the close match and every valid one."""
    unknown = [k for k in options if k not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(valid), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    listing = "\n".join(f"  {k}: {v}" for k, v in valid.items()) if valid else "  (none)"
    raise ClusterError(f"{scheduler}: unknown scheduler option {', '.join(hints)}; "
                       f"valid options:\n{listing}")


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
