"""The job's exit file (``state.json``), where the job runs: how the run ended, decided by a pure
function of what happened, then written signed, bound to the job id, atomically and last.

The kernel's monitor trusts this file over scheduler accounting once it verifies. Standard
library only (imported by :mod:`.runner`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .jobdir import IntegrityError, JobPaths, load_secret, sign_exit, write_atomic

#: the exit code of a job whose runner failed (EX_SOFTWARE), as opposed to the cell
INTERNAL_ERROR = 70
#: the longest reason kept in the exit file (the cell's whole exception is in the result)
REASON_LIMIT = 2000


@dataclass(frozen=True)
class Outcome:
    """What happened to the run: the cell's own exception, a signal that stopped the job, or a
    failure of the runner itself during ``phase``; none of them is a completed cell."""

    cell_error: BaseException | None = None
    signum: int | None = None
    internal: BaseException | None = None
    phase: str = ""


@dataclass(frozen=True)
class Exit:
    """The exit file's verdict: state, process exit code, reason, and extra fields."""

    state: str
    code: int
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def decide(outcome: Outcome) -> Exit:
    """The final state of a run (pure)."""
    if outcome.signum is not None:
        code = 128 + outcome.signum
        if outcome.signum == signal.SIGXCPU:
            # a time limit (the local scheduler's, RLIMIT_CPU): the signal stays in the exit
            # file, the reason is in the user's words
            return Exit("timeout", code, "time limit reached", {"signal": outcome.signum})
        name = signal.Signals(outcome.signum).name
        return Exit("cancelled", code, f"terminated by {name} while {outcome.phase}",
                    {"signal": outcome.signum})
    if outcome.internal is not None:
        e = outcome.internal
        return Exit("failed", INTERNAL_ERROR,
                    f"{type(e).__name__} while {outcome.phase}: {e}", {"internal": True})
    if outcome.cell_error is not None:
        e = outcome.cell_error
        return Exit("failed", 1, f"the cell raised {type(e).__name__}: {e}",
                    {"cell_error": True})
    return Exit("completed", 0)


def exit_document(verdict: Exit, started: float, finished: float, host: str, pid: int,
                  has_result: bool) -> dict[str, Any]:
    """The exit file's content (pure): the verdict, where and when the run happened, and whether
    a result was written."""
    reason = verdict.reason
    if len(reason) > REASON_LIMIT:
        reason = reason[:REASON_LIMIT] + " …"
    return {"state": verdict.state, "exit_code": verdict.code, "reason": reason,
            "host": host, "pid": pid, "started": started, "finished": finished,
            "result": has_result, **verdict.extra}


def write_exit(paths: JobPaths, key: bytes, verdict: Exit, started: float,
               secret: str = "") -> None:
    """Write the exit file, signed with ``key`` (or with the secret read from ``secret`` when
    the run failed before it had one; unsigned if there is none, which the kernel reports as
    not verifiable, with this reason)."""
    doc = exit_document(verdict, started, time.time(), socket.gethostname(), os.getpid(),
                        os.path.exists(paths.result_sig))
    if not key and secret:
        try:
            key = load_secret(secret)
        except (OSError, IntegrityError):
            key = b""
    data = sign_exit(key, paths.job_id, doc) if key else json.dumps(doc).encode()
    write_atomic(paths.state, data)
