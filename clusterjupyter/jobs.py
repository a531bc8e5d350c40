"""The :class:`Job` handle, following a running job's output, and pushing results into a kernel."""

from __future__ import annotations

import json
import linecache
import sys
import threading
import time
import warnings
from typing import Any, Callable

from .backends import Backend, backend_for_record
from .errors import JobCancelledError, JobFailedError
from .journal import JobRecord
from .payload import JobResult
from .states import JobState


class UnpicklableOutputWarning(UserWarning):
    """Some names bound by the cell could not be sent back (the others were)."""


class Job:
    """A submitted job. Returned by ``%%cluster --async`` and ``%cluster status``."""

    def __init__(self, record: JobRecord, backend: Backend | None = None):
        self._record = record
        self._backend = backend
        self._result: JobResult | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def profile(self) -> str:
        return self._record.profile

    @property
    def native_id(self) -> str | None:
        return self.record.native_id

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = backend_for_record(self._record)
        return self._backend

    @property
    def record(self) -> JobRecord:
        """The journal's current record of this job."""
        rec = self.backend.journal.get(self.id)
        if rec is not None:
            self._record = rec
        return self._record

    @property
    def state(self) -> JobState:
        rec = self.record
        if not rec.state.final:
            self.backend.monitor.track(rec)
        return rec.state

    # -- operations -------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job is final (or ``timeout`` seconds pass); return its state."""
        rec = self.record
        if rec.state.final:
            return rec.state
        done = self.backend.monitor.track(rec)
        self.backend.monitor.waiting(self.id, True)
        try:
            deadline = None if timeout is None else time.time() + timeout
            while not done.wait(0.1):
                if deadline is not None and time.time() > deadline:
                    break
        finally:
            self.backend.monitor.waiting(self.id, False)
        return self.record.state

    def result(self, namespace: dict | None = None, main: Any = None,
               timeout: float | None = None) -> JobResult:
        """Wait for the job, then verify and load what it sent back.

        Raises :class:`JobFailedError` (or :class:`JobCancelledError`) when the job ended
        without a result, with the reason and the tail of its logs.
        """
        state = self.wait(timeout)
        if not state.final:
            raise TimeoutError(f"job {self.id[:8]} is still {state.value}")
        if self._result is None:
            rec = self.record
            if rec.result_status == "none" and not self.backend.has_result(rec):
                raise failure(self.backend, rec)
            if namespace is None or main is None:
                namespace, main = _default_namespace()
            self._result = self.backend.fetch_result(rec, namespace, main)
        return self._result

    def cancel(self) -> JobState:
        """Ask the scheduler to stop the job; returns the state once it is final."""
        self.backend.cancel(self.record)
        return self.wait(60)

    def logs(self, stream: str = "stdout", tail: int | None = None) -> str:
        """The job's stdout (or ``stderr``/``scheduler``), the last ``tail`` lines if given."""
        from .api import LOG_STREAMS

        if stream not in LOG_STREAMS:
            raise ValueError(f"unknown log stream {stream!r}; valid: {', '.join(LOG_STREAMS)}")
        return self.backend.logs(self.record, stream, tail)

    def __repr__(self) -> str:
        rec = self._record
        native = f" #{rec.native_id}" if rec.native_id else ""
        return f"<Job {rec.id[:8]} {rec.name!r} on {rec.profile}{native}: {rec.state.value}>"


def _default_namespace() -> tuple[dict, Any]:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        return shell.user_ns, shell.user_module
    main = sys.modules["__main__"]
    return main.__dict__, main


def failure(backend: Backend, rec: JobRecord) -> JobFailedError:
    """The error for a job that ended without a result: state, reason, exit code, log tail."""
    reason = rec.reason or "no reason was reported"
    if rec.exit_code not in (None, 0) and rec.state is JobState.FAILED \
            and not any(w in reason for w in ("code", "signal")):
        reason += f" (exit code {rec.exit_code})"
    cls = JobCancelledError if rec.state is JobState.CANCELLED else JobFailedError
    return cls(rec.id[:8], rec.state.value, reason, backend.log_tail(rec))


class Follower:
    """Copies a running job's stdout, stderr and rich outputs into the kernel as they grow."""

    def __init__(self, backend: Backend, rec: JobRecord,
                 publish: Callable[[dict, dict], None] | None = None):
        self.backend = backend
        p = backend.paths(rec)
        self.files = {"stdout": p.stdout, "stderr": p.stderr, "displays": p.displays}
        self.offsets = dict.fromkeys(self.files, 0)
        self.partial = b""
        self.publish = publish

    def pump(self) -> bool:
        """Forward whatever is new; True if anything was."""
        moved = False
        t = self.backend.transport
        for stream, path in self.files.items():
            chunk = t.read_from(path, self.offsets[stream])
            if not chunk:
                continue
            moved = True
            self.offsets[stream] += len(chunk)
            if stream == "displays":
                self._displays(chunk)
            else:
                out = sys.stdout if stream == "stdout" else sys.stderr
                out.write(chunk.decode(errors="replace"))
                out.flush()
        return moved

    def _displays(self, chunk: bytes) -> None:
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if self.publish is not None:
                self.publish(msg.get("data", {}), msg.get("metadata", {}))


def publish_display(data: dict, metadata: dict) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data=data, metadata=metadata)


def apply_result(result: JobResult, namespace: dict) -> list[str]:
    """Push a job's values into ``namespace``: bound and mutated names, deletions.

    Names that could not come back are named in an :class:`UnpicklableOutputWarning`; the rest
    still arrive. Returns the names that changed.
    """
    namespace.update(result.values)
    for name in result.deleted:
        namespace.pop(name, None)
    if result.warnings:
        lines = "; ".join(f"{n}: {why}" for n, why in result.warnings.items())
        warnings.warn_explicit(
            f"not sent back from the cluster (the other names were): {lines}",
            UnpicklableOutputWarning, filename=f"<cluster-cell-{result.job_id[:8]}>", lineno=1)
    return [*result.values, *(f"del {n}" for n in result.deleted)]


def register_source(job_id: str, source: str) -> None:
    """Let tracebacks show the lines of the remote cell."""
    filename = f"<cluster-cell-{job_id[:8]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


class Waiter:
    """Blocks the cell until its job ends, forwarding output and keeping a status line."""

    def __init__(self, job: Job, follower: Follower, status: Any = None):
        self.job = job
        self.follower = follower
        self.status = status

    def run(self) -> JobState:
        backend = self.job.backend
        rec = self.job.record
        done = backend.monitor.track(rec)
        backend.monitor.waiting(rec.id, True)
        interval = backend.watch_interval
        last_status = 0.0
        try:
            while True:
                finished = done.wait(interval)
                self.follower.pump()
                if finished:
                    break
                interval = min(interval * 1.5, 0.25)
                if self.status is not None and time.time() - last_status > 0.5:
                    self.status.update(self.job.record)
                    last_status = time.time()
        finally:
            backend.monitor.waiting(rec.id, False)
        self.follower.pump()
        rec = self.job.record
        if self.status is not None:
            self.status.update(rec)
        return rec.state


class PushBack:
    """Applies finished ``--async`` jobs to the namespace between cells, with a notice.

    The monitor thread only queues a finished job; the queue is drained on the kernel's main
    thread after a cell ends, before the next one starts, or (in a Jupyter kernel) as soon as
    the kernel is idle — never in the middle of a cell.
    """

    def __init__(self, shell: Any):
        self.shell = shell
        self.pending: list[tuple[Job, Any]] = []
        self.lock = threading.Lock()
        self.in_cell = False
        shell.events.register("pre_run_cell", self._pre)
        shell.events.register("post_run_cell", self._post)

    def watch(self, job: Job, status: Any = None) -> None:
        def on_change(rec: JobRecord) -> None:
            if rec.state.final:
                with self.lock:
                    self.pending.append((job, status))
                self._wake()

        job.backend.monitor.track(job.record, on_change)

    def _wake(self) -> None:
        kernel = getattr(self.shell, "kernel", None)
        loop = getattr(kernel, "io_loop", None)
        if loop is not None:
            loop.add_callback(self.drain)

    def _pre(self, *args: Any) -> None:
        self.drain()
        self.in_cell = True

    def _post(self, *args: Any) -> None:
        self.in_cell = False
        self.drain()

    def drain(self) -> None:
        if self.in_cell:
            return
        with self.lock:
            items, self.pending = self.pending, []
        for job, status in items:
            self._apply(job, status)

    def _apply(self, job: Job, status: Any) -> None:
        rec = job.record
        if status is not None:
            status.update(rec)
        try:
            result = job.result(self.shell.user_ns, self.shell.user_module)
        except JobFailedError as e:
            print(f"clusterjupyter: {e}", file=sys.stderr)
            return
        except Exception as e:
            print(f"clusterjupyter: could not load the result of job {job.id[:8]}: {e}",
                  file=sys.stderr)
            return
        names = apply_result(result, self.shell.user_ns)
        what = ", ".join(names) if names else "no names"
        if result.exception is not None:
            exc = result.exception
            print(f"clusterjupyter: job {job.id[:8]} ({job.name}) raised "
                  f"{type(exc).__name__}: {exc}; use %cluster result {job.id[:8]} to re-raise "
                  f"it here. Pushed: {what}", file=sys.stderr)
        else:
            print(f"clusterjupyter: job {job.id[:8]} ({job.name}) finished; pushed {what}")
        job.backend.journal.update(job.id, result_status="pushed")
