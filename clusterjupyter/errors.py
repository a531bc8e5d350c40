"""Exceptions raised by clusterjupyter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .jobdir import IntegrityError  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from .journal import JobRecord


class ClusterError(Exception):
    """Base class of clusterjupyter's own errors."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through clusterjupyter's internals: the
        # message says what went wrong and how to fix it
        return [f"{type(self).__name__}: {self}"]


class CommandError(ClusterError):
    """An external command (sbatch, squeue, ssh ...) failed."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str,
                 where: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.where = where
        cmd = " ".join(self.argv)
        detail = (stderr or stdout).strip()
        tail = "\n".join(detail.splitlines()[-10:])
        loc = f" on {where}" if where else ""
        super().__init__(f"command failed{loc} (exit code {returncode}): {cmd}"
                         + (f"\n{tail}" if tail else ""))


class TransportError(ClusterError):
    """The connection to a cluster could not be made or was lost for good."""


class ProfileError(ClusterError):
    """A cluster profile is invalid; ``field`` names the offending field."""

    def __init__(self, message: str, profile: str | None = None, field: str | None = None):
        self.profile = profile
        self.field = field
        where = ""
        if profile:
            where = f"profile {profile!r}" + (f", field {field!r}" if field else "")
        elif field:
            where = f"field {field!r}"
        super().__init__(f"{where}: {message}" if where else message)


class JournalError(ClusterError):
    """The job journal cannot be opened or read (the message names it and what to do)."""


class UnknownJobError(ClusterError, KeyError):
    """No job in the journal answers to a reference (a KeyError too, for ``except KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousJobError(UnknownJobError):
    """An id prefix names several jobs; ``candidates`` are their records, newest first."""

    def __init__(self, ref: str, candidates: "list[JobRecord]"):
        self.ref = ref
        self.candidates = candidates
        lines = "\n".join(f"  {r.id[:12]}  {r.name}  {r.state.value}" for r in candidates[:10])
        more = " (and more)" if len(candidates) > 10 else ""
        super().__init__(f"job id prefix {ref!r} matches several jobs{more}; give more digits:"
                         f"\n{lines}")


class CaptureError(ClusterError):
    """Some inputs of the cell cannot be sent; nothing was submitted."""

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        lines = "\n".join(f"  {name}: {why}" for name, why in self.problems.items())
        names = ", ".join(self.problems)
        super().__init__(
            f"cannot send {names} to the cluster (nothing was submitted):\n{lines}\n"
            "Define these inside the cell, or pass --skip NAME to leave them behind.")


class JobFailedError(ClusterError):
    """The job ended without a result (killed, timed out, out of memory, lost ...)."""

    def __init__(self, job_id: str, state: str, reason: str, log_tail: str = ""):
        self.job_id = job_id
        self.state = state
        self.reason = reason
        self.log_tail = log_tail
        msg = f"job {job_id} ended {state}: {reason}"
        if log_tail.strip():
            msg += "\n--- last lines of the job's logs ---\n" + log_tail.rstrip()
        super().__init__(msg)


class JobCancelledError(JobFailedError):
    """The job was cancelled (by the user, the interrupt key, or the scheduler)."""


class RemoteError(ClusterError):
    """An exception raised by the cell on the cluster that cannot be rebuilt here."""

    def __init__(self, type_name: str, message: str, traceback_text: str):
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n\nRemote traceback:\n{self.traceback_text}"

    def _render_traceback_(self) -> list[str]:
        return [f"RemoteError: {self.type_name}: {self.message}", "",
                "Remote traceback:", self.traceback_text.rstrip()]


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised on the cluster (set as ``__cause__``)."""

    def __init__(self, text: str):
        self.text = text
        super().__init__(text)

    def __str__(self) -> str:
        return "\n" + self.text
