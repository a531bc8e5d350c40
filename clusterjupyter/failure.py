"""Why a job did not complete, kept with the job in the journal (its ``error`` column).

:func:`describe` gathers, once, when a job ends in any state but ``completed``: the exception the
cell raised (type, message, remote traceback — from the job's *signed* result document, nothing
is unpickled), the exit code, the signal, the limit it hit, and the tail of its logs. The record
then serves every front end, in any process, after any restart: the magics, the widgets, the
server routes and the command line show the same text (:func:`format_error`).

:func:`error_of` returns a finished job's record, building and storing it first for jobs that
ended before the journal kept one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .jobdir import verify_document, verify_exit
from .journal import JobRecord
from . import text
from .states import JobState

if TYPE_CHECKING:
    from .backends import Backend

#: lines of stderr and of the scheduler log kept with a failed job
LOG_LINES = 15
#: characters kept of a traceback / of the log tail (a runaway log cannot bloat the journal)
MAX_TEXT = 16000


def signal_name(number: int | None) -> str:
    """``SIGTERM`` for 15 (see :func:`.text.signal_name`); empty for None."""
    return text.signal_name(number) if number else ""


def _limit(rec: JobRecord, state: JobState) -> str:
    """``time limit 2 min``: the limit the job hit, in the user's units (the options keep
    seconds and megabytes)."""
    opts = rec.options or {}
    if state is JobState.TIMEOUT:
        return "time limit" + (f" {text.limit_duration(opts['time'])}" if opts.get("time")
                               else "")
    if state is JobState.OUT_OF_MEMORY:
        return "memory limit" + (f" {text.megabytes(opts['mem'])}" if opts.get("mem") else "")
    return ""


def _limit_words(limit: str, reason: str) -> str:
    """What to add about ``limit`` to ``reason`` (pure): only the amount when the reason already
    names that limit (``time limit reached`` → ``2 s``); nothing when it names another limit of
    the same kind (a CPU time limit is not the wall-clock ``--time``)."""
    kind, _, amount = limit.partition(" limit")
    amount = amount.strip()
    words = reason.lower()
    if kind == "time" and "cpu time" in words:
        return ""
    if f"{kind} limit" in words:
        return amount
    return f"hit its {limit}"


def _join(why: str, extra: list[str], cell_message: bool) -> str:
    """``why`` with ``extra`` in one pair of parentheses (pure). A reason in the scheduler's or
    runner's own words that ends in a parenthesis takes the extra words inside it (``reached
    its time limit (--time, 2 min)``); the cell's own message is never opened up."""
    extra = [e for e in extra if e]
    if not extra:
        return why
    if not cell_message and why.endswith(")") and "(" in why and why.count("(") == why.count(")"):
        return f"{why[:-1]}, {'; '.join(extra)})"
    return f"{why} ({'; '.join(extra)})"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else "…" + text[-MAX_TEXT:]


def user_frames(traceback_text: str) -> str:
    """A traceback without the frames of clusterjupyter's own runner (the user wrote the
    cell, not the code that runs it)."""
    out: list[str] = []
    skipping = False
    for line in traceback_text.splitlines(keepends=True):
        if line.startswith("  File "):
            skipping = '/clusterjupyter/' in line.replace("\\", "/") and '"' in line \
                and line.split('"')[1].replace("\\", "/").rsplit("/", 2)[-2] == "clusterjupyter"
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            out.append(line)
    return "".join(out)


def _exception(backend: Backend, rec: JobRecord) -> dict[str, str]:
    """The cell's exception from the verified result document (empty if none or unreadable)."""
    p = backend.paths(rec)
    try:
        if not backend.transport.existing([p.result]):
            return {}
        doc = verify_document(backend.key, "result", backend.transport.read(p.result),
                              backend.transport.read(p.result_sig))
    except Exception:
        return {}
    exc = doc.get("exception") or {}
    if doc.get("job_id") != p.job_id or not isinstance(exc, dict):
        return {}
    return {"type": str(exc.get("type", "")), "message": str(exc.get("message", "")),
            "traceback": _clip(user_frames(str(exc.get("traceback", ""))))}


def describe(backend: Backend, rec: JobRecord, runner: dict | None, state: JobState,
             reason: str, exit_code: int | None) -> dict[str, Any]:
    """Everything known about why ``rec`` ended ``state`` (see the module docstring).

    ``runner`` is the job's exit file (None if it never wrote one). Reads the job's files
    through the backend's transport; never raises (what cannot be read is left out).
    """
    sig = (runner or {}).get("signal")
    if not sig and exit_code and exit_code > 128 and state is JobState.CANCELLED:
        sig = exit_code - 128
    err: dict[str, Any] = {"state": state.value, "reason": reason, "exit_code": exit_code,
                           "signal": signal_name(sig if isinstance(sig, int) else None),
                           "limit": _limit(rec, state)}
    try:
        err.update(_exception(backend, rec))
    except Exception:
        pass
    try:
        err["log_tail"] = _clip(backend.log_tail(rec, LOG_LINES))
    except Exception:
        err["log_tail"] = ""
    return {k: v for k, v in err.items() if v not in (None, "")}


def _read_exit_file(backend: Backend, rec: JobRecord) -> dict | None:
    try:
        return verify_exit(backend.key, rec.id, backend.transport.read(backend.paths(rec).state))
    except Exception:
        return None


def error_of(rec: JobRecord, backend: Backend) -> dict[str, Any]:
    """The failure record of a finished job that did not complete; ``{}`` for any other job.

    Jobs that ended before the journal kept the record get it now, from their job directory,
    and the journal keeps it from then on.
    """
    if not rec.state.final or rec.state is JobState.COMPLETED:
        return {}
    if rec.error:
        return rec.error
    err = describe(backend, rec, _read_exit_file(backend, rec), rec.state, rec.reason,
                   rec.exit_code)
    try:
        backend.journal.update(rec.id, error=err)
    except Exception:
        pass
    rec.error = err
    return err


def explain(rec: JobRecord, err: dict[str, Any] | None = None) -> str:
    """Why, in words (no jargon: ``stopped by SIGTERM``, not ``exit code 143``)."""
    err = rec.error if err is None else err
    if err.get("type"):
        short = err["type"].rsplit(".", 1)[-1]
        why = f"the cell raised {short}" + (f": {err['message']}" if err.get("message") else "")
    else:
        why = rec.reason or err.get("reason", "") or "no reason was reported"
    extra = []
    if err.get("limit"):
        extra.append(_limit_words(err["limit"], why))
    # a cancel or a time limit explains the signal that stopped the job (the local scheduler's
    # time limit is a SIGXCPU, a batch scheduler's a SIGTERM): no signal jargon then
    quiet = rec.state in (JobState.CANCELLED, JobState.TIMEOUT)
    if err.get("signal") and err["signal"] not in why and not quiet:
        extra.append(f"stopped by {err['signal']}")
    elif (rec.exit_code not in (None, 0) and not err.get("type") and not err.get("signal")
          and not quiet and not any(w in why for w in ("code", "signal"))):
        extra.append(f"exit code {rec.exit_code}")
    return _join(why, extra, cell_message=bool(err.get("type")))


def listed_reason(rec: JobRecord) -> str:
    """The reason a listing shows: explained for a job that ended badly, else the scheduler's."""
    return explain(rec) if rec.state.final and not rec.state.ok else rec.reason


def headline(rec: JobRecord, err: dict[str, Any] | None = None) -> str:
    """One line: ``job 1a2b3c4d failed: the cell raised ValueError: bad input``."""
    return f"job {rec.id[:8]} {rec.state.value.replace('_', ' ')}: {explain(rec, err)}"


def format_error(rec: JobRecord, err: dict[str, Any] | None = None, logs: bool = True) -> str:
    """The full text of why a job failed: headline, remote traceback, the logs' last lines
    (unless ``logs`` is False)."""
    err = rec.error if err is None else err
    lines = [headline(rec, err)]
    if err.get("traceback"):
        lines += ["", "Remote traceback:", err["traceback"].rstrip()]
    if logs and err.get("log_tail"):
        lines += ["", "Last lines of the job's logs:", err["log_tail"].rstrip()]
    return "\n".join(lines)


def empty_log(stream: str, final: bool) -> str:
    """What a front end shows for an empty log (the same words everywhere)."""
    return f"({stream} is empty)" if final else f"({stream} is empty so far)"


def summary(rec: JobRecord) -> str:
    """One line describing a job (the status line and ``%cluster status``): who, state, how long
    and where, then why after a dash, so the reason keeps its own parentheses:
    ``job 1a2b3c4d cell-3 [slurm #42] timeout 2m00s on node1 — reached its time limit
    (--time, 2 min)``."""
    parts = [f"job {rec.id[:8]}", rec.name, f"[{rec.profile}"
             + (f" #{rec.native_id}]" if rec.native_id else "]"), rec.state.value]
    if rec.started:
        parts.append(text.short_duration(rec.elapsed))
    if rec.host and rec.state.final:
        parts.append(f"on {rec.host}")
    why = explain(rec, rec.error or {}) if rec.state.final and not rec.state.ok else rec.reason
    return " ".join(parts) + (f" — {why}" if why else "")
