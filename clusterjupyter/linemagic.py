"""``%cluster SUBCOMMAND …``: the line magic's subcommands.

Each subcommand is a pure reading of its words (``parse_*``: what was asked, or a UsageError
naming the valid options) and a short function that asks the library (:mod:`.api`,
:mod:`.backends`, …) and prints. :func:`run` dispatches; :class:`~.magics.ClusterMagics` calls it
with itself, for the kernel's shell and the default profile.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from IPython.core.error import UsageError

from . import api
from .backends import backend_for
from .errors import ClusterError, ProfileError
from .failure import empty_log, format_error
from .jobs import Job, queue, register_source
from .journal import JobRecord, format_seconds
from .options import count_option
from .profiles import get_profile, load_profiles
from .states import JobState

if TYPE_CHECKING:
    from .magics import ClusterMagics
    from .sweeplist import Row

T = TypeVar("T")

SUBCOMMANDS = {
    "jobs": "list jobs from the journal (all kernels)",
    "status": "show one job",
    "logs": "show a job's stdout, stderr or scheduler log",
    "cancel": "cancel a job",
    "result": "push a finished job's outputs into this kernel",
    "files": "bring back the files a job left on the cluster (over the return limit)",
    "profiles": "list cluster profiles",
    "default": "choose the profile %%cluster uses without a name",
    "script": "show the job script %%cluster would submit",
    "queue": "show the scheduler's queue of a profile",
    "panel": "open the job monitor panel",
    "metrics": "jobs by state, retries, reconnects, commands, timings per profile",
    "sweep": "show a sweep's elements and their states",
    "env": "env sync|list|prune|off|log PROFILE [--packages a,b] [--all]: a matching "
           "environment",
}


def usage() -> str:
    lines = [f"  %cluster {k:<9} {v}" for k, v in SUBCOMMANDS.items()]
    return "usage:\n" + "\n".join(lines) + "\n  %%cluster [PROFILE] [options]  run a cell"


# -- reading the words (pure) ---------------------------------------------------------------------

def split_line(line: str) -> tuple[str, str]:
    """The subcommand and the rest of the line; an unknown one is named with the closest."""
    words = line.strip().split(None, 1)
    if not words:
        raise UsageError(usage())
    sub, rest = words[0], (words[1] if len(words) > 1 else "")
    if sub not in SUBCOMMANDS:
        close = difflib.get_close_matches(sub, list(SUBCOMMANDS), n=1)
        raise UsageError(f"unknown subcommand {sub!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else "") + "\n" + usage())
    return sub, rest


def one_arg(rest: str, what: str) -> str:
    parts = rest.split()
    if len(parts) != 1:
        raise UsageError(f"expected one {what}, got {rest!r}")
    return parts[0]


@dataclass(frozen=True)
class JobsQuery:
    states: tuple[str, ...] | None = None
    profile: str | None = None
    limit: int = 50


def parse_jobs(rest: str) -> JobsQuery:
    states: tuple[str, ...] | None = None
    profile = None
    limit = 50
    it = iter(rest.split())
    for word in it:
        if word == "--active":
            states = ("pending", "running")
        elif word == "--state":
            try:
                states = tuple(JobState.parse(s).value for s in next(it, "").split(","))
            except ValueError as e:
                raise UsageError(str(e)) from None
        elif word == "--profile":
            profile = next(it, None)
        elif word == "--limit":
            limit = count_option("--limit", next(it, ""))
        else:
            raise UsageError(f"unknown option {word!r} for %cluster jobs; valid: --active, "
                             "--state STATE[,STATE], --profile NAME, --limit N")
    return JobsQuery(states, profile, limit)


@dataclass(frozen=True)
class LogsQuery:
    ref: str
    stream: str = "stdout"
    tail: int | None = None


def parse_logs(rest: str) -> LogsQuery:
    stream, tail, ref = "stdout", None, None
    it = iter(rest.split())
    for word in it:
        if word in ("--stream", "-s"):
            stream = next(it, "")
        elif word in ("--stderr", "--stdout", "--scheduler"):
            stream = word[2:]
        elif word in ("--tail", "-n"):
            tail = count_option("--tail", next(it, ""))
        elif word.startswith("-"):
            raise UsageError(f"unknown option {word!r} for %cluster logs; valid: "
                             "--stream stdout|stderr|scheduler, --tail N")
        else:
            ref = word
    if ref is None:
        raise UsageError("usage: %cluster logs ID [--stream stderr] [--tail N]")
    return LogsQuery(ref, stream, tail)


@dataclass(frozen=True)
class EnvQuery:
    action: str
    profile: str | None = None
    packages: list[str] | None = None
    whole: bool = False


def parse_env(rest: str, actions: tuple[str, ...] | list[str]) -> EnvQuery:
    words = rest.split()
    if not words or words[0] not in actions:
        raise UsageError(f"usage: %cluster env {{{'|'.join(actions)}}} [PROFILE] "
                         "[--packages a,b] [--all]")
    packages = None
    if "--packages" in words:
        i = words.index("--packages")
        packages = [p for p in ",".join(words[i + 1:i + 2]).split(",") if p]
        del words[i:i + 2]
    whole = "--all" in words
    words = [w for w in words if w != "--all"]
    if len(words) > 2 or any(w.startswith("-") for w in words):
        raise UsageError(f"unexpected {' '.join(words[2:]) or words[-1]!r}; options: "
                         "--packages a,b, --all")
    return EnvQuery(words[0], words[1] if len(words) > 1 else None, packages, whole)


# -- the subcommands ------------------------------------------------------------------------------

def _ask(call: Callable[..., T], *args: Any,
         refused: tuple[type[Exception], ...] = (ValueError,)) -> T:
    """A library call; what it refuses (a value the user typed, a cluster's answer) is a
    UsageError with the library's words."""
    try:
        return call(*args)
    except refused as e:
        raise UsageError(str(e)) from None


def _refresh(recs: list[JobRecord]) -> None:
    def say(profile: str, e: Exception) -> None:
        print(f"clusterjupyter: cannot refresh jobs of {profile}: {e}", file=sys.stderr)

    api.refresh_jobs(recs, on_error=say)


def jobs_table(rows: list[Row]) -> str:
    """The ``%cluster jobs`` table (pure)."""
    lines = [f"{'ID':<9} {'NAME':<18} {'PROFILE':<10} {'NATIVE':<9} {'STATE':<13} "
             f"{'ELAPSED':>8}  REASON"]
    for r in rows:
        lines.append(f"{r.id[:8]:<9} {r.name[:18]:<18} {r.profile[:10]:<10} "
                     f"{r.native[:9]:<9} {r.state.value:<13} "
                     f"{format_seconds(r.elapsed):>8}  {r.reason[:60]}")
    return "\n".join(lines)


def cmd_jobs(magics: ClusterMagics, rest: str) -> None:
    from .sweeplist import job_rows

    q = parse_jobs(rest)
    # a sweep is one row, with its element counts
    rows = job_rows(api.journal(), q.states, q.profile, q.limit, _refresh)
    if not rows:
        print("no jobs in the journal" + (f" for profile {q.profile}" if q.profile else ""))
        return
    print(jobs_table(rows))


def cmd_status(magics: ClusterMagics, rest: str) -> Job:
    rec = api.get_job(one_arg(rest, "job id"))
    _refresh([rec])
    return Job(api.get_job(rec.id))


def cmd_logs(magics: ClusterMagics, rest: str) -> None:
    q = parse_logs(rest)
    text = _ask(api.job_logs, q.ref, q.stream, q.tail)
    rec = api.get_job(q.ref)
    print(text or empty_log(q.stream, rec.state.final), end="" if text else "\n")
    err = Job(rec).error
    if err:
        print(("\n" if text and not text.endswith("\n") else "") + "\n"
              + format_error(rec, err, logs=False))


def cmd_cancel(magics: ClusterMagics, rest: str) -> None:
    rec = api.get_job(one_arg(rest, "job id"))
    if rec.state.final:
        print(f"job {rec.id[:8]} already ended: {rec.state.value}")
        return
    state = Job(rec).cancel()
    print(f"job {rec.id[:8]} on {rec.profile}: {state.value}")


def cmd_sweep(magics: ClusterMagics, rest: str) -> Any:
    from .sweepcell import show_sweep

    return show_sweep(one_arg(rest, "sweep id"))


def cmd_result(magics: ClusterMagics, rest: str) -> Any:
    __tracebackhide__ = True
    from .sweepcell import sweep_result
    from .sweeps import find

    ref = one_arg(rest, "job id")
    if find(ref) is not None:
        return sweep_result(magics, ref)
    rec = api.get_job(ref)
    _refresh([rec])
    job = Job(api.get_job(rec.id))
    register_source(rec.id, rec.cell)
    state = job.wait()
    return magics._finish(job, state)


def cmd_files(magics: ClusterMagics, rest: str) -> None:
    from .staging import fetch_left

    job = Job(api.get_job(one_arg(rest, "job id")))
    if not job.backend.has_result(job.record):
        raise UsageError(f"job {job.id[:8]} has no result (yet): {job.record.state.value}")
    b = job.backend
    notice = fetch_left(b.transport, b.paths(job.record), b.key).notice(
        job.id, b.transport.where, b.name)
    print(notice or f"job {job.id[:8]} left no files on {b.transport.where}",
          file=sys.stderr if notice else sys.stdout)


def cmd_profiles(magics: ClusterMagics, rest: str) -> None:
    current = magics.current_profile()
    for p in load_profiles().values():
        mark = "*" if p.name == current else " "
        where = f"{p.user + '@' if p.user else ''}{p.host}" if p.host else "this machine"
        print(f"{mark} {p.name:<14} {p.scheduler:<10} {where}"
              + (f"  {p.description}" if p.description else ""))


def cmd_default(magics: ClusterMagics, rest: str) -> None:
    parts = rest.split()
    save = "--save" in parts
    names = [p for p in parts if p != "--save"]
    if not names:
        print(magics.current_profile())
        return
    name = names[0]
    get_profile(name)
    magics.default_profile = name
    if save:
        from .profiles import set_default

        set_default(name)
    print(f"%%cluster now runs on {name!r}" + (" (saved)" if save else ""))


def cmd_script(magics: ClusterMagics, rest: str) -> None:
    args = magics.cell_options(rest)
    args.dry_run = True
    magics._run_cell(args, "")


def cmd_queue(magics: ClusterMagics, rest: str) -> None:
    backend = backend_for(rest.strip() or magics.profile_name(None))
    listed = _ask(queue, backend, refused=(ClusterError,))
    if not listed:
        print(f"the queue of {backend.name} is empty")
        return
    print(f"{'JOBID':<10} {'NAME':<20} {'USER':<10} {'STATE':<10} {'TIME':>10}  REASON")
    for q, r in listed:
        name = r.name if r else q.name
        print(f"{q.native_id:<10} {name[:20]:<20} {q.user[:10]:<10} {q.state.value:<10} "
              f"{q.elapsed:>10}  {q.reason}")


def cmd_metrics(magics: ClusterMagics, rest: str) -> None:
    from .metrics import collect, format_table

    figures = collect(api.journal())
    wanted = rest.strip()
    if wanted:
        if wanted not in figures:
            raise UsageError(f"no metrics for profile {wanted!r}; profiles with "
                             f"jobs: {', '.join(figures) or 'none'}")
        figures = {wanted: figures[wanted]}
    print(format_table(figures))


def cmd_panel(magics: ClusterMagics, rest: str) -> Any:
    from .widgets import Panel

    return Panel(magics.shell)


def cmd_env(magics: ClusterMagics, rest: str) -> None:
    from .envsync import ACTIONS, command

    q = parse_env(rest, ACTIONS)
    backend = backend_for(magics.profile_name(q.profile))
    _ask(command, backend, q.action, q.packages, q.whole, refused=(ClusterError,))


HANDLERS: dict[str, Callable[[Any, str], Any]] = {
    "jobs": cmd_jobs, "status": cmd_status, "logs": cmd_logs, "cancel": cmd_cancel,
    "result": cmd_result, "files": cmd_files, "profiles": cmd_profiles, "default": cmd_default,
    "script": cmd_script, "queue": cmd_queue, "panel": cmd_panel, "metrics": cmd_metrics,
    "sweep": cmd_sweep, "env": cmd_env,
}


def run(magics: ClusterMagics, line: str) -> Any:
    """Run ``%cluster LINE``; a job or profile that does not exist is a UsageError."""
    __tracebackhide__ = True
    sub, rest = split_line(line)
    try:
        return HANDLERS[sub](magics, rest)
    except KeyError as e:
        raise UsageError(str(e).strip("'\"")) from None
    except ProfileError as e:
        raise UsageError(str(e)) from None
