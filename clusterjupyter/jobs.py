"""The :class:`Job` handle, following a running job's output, and pushing results into a kernel."""

from __future__ import annotations

import json
import linecache
import sys
import threading
import time
from typing import Any, Callable

from .backends import Backend, backend_for_record
from .errors import ClusterError, IntegrityError, JobCancelledError, JobFailedError
from .failure import error_of, explain, format_error
from . import writeback
from .journal import JobRecord
from .writeback import UnpicklableOutputWarning  # noqa: F401  (part of this module's API)
from .monitor import INTEGRITY
from .payload import JobResult
from .states import JobState


#: lines of the cell a listing carries (the full source comes with one job)
PREVIEW_LINES = 3
PREVIEW_CHARS = 240


class Job:
    """A submitted job, used like a :class:`concurrent.futures.Future`.

    Returned by ``%%cluster --async`` (and bound by ``--job NAME``). ``result()`` is the cell's
    value (or raises the cell's exception, with its own type); ``outputs()`` the names the cell
    bound; ``done()``, ``exception()``, ``add_done_callback()`` as on a future; ``record`` the
    journal's full record; ``error`` why it did not complete. ``repr`` shows the live state.
    """

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

    @property
    def error(self) -> dict[str, Any]:
        """Why the job did not complete (see :mod:`clusterjupyter.failure`); ``{}`` otherwise."""
        return error_of(self.record, self.backend)

    # -- the future interface ---------------------------------------------------------------
    def done(self) -> bool:
        """True once the job has ended (in any state)."""
        return self.state.final

    def running(self) -> bool:
        return self.state is JobState.RUNNING

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

    def load(self, namespace: dict | None = None, main: Any = None,
             timeout: float | None = None) -> JobResult:
        """Wait for the job, then verify and load everything it sent back (a ``JobResult``).

        Raises :class:`JobFailedError` (or :class:`JobCancelledError`) when the job ended
        without a result, with the reason and the tail of its logs; ``TimeoutError`` if it is
        still running after ``timeout`` seconds.
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

    def result(self, timeout: float | None = None) -> Any:
        """The cell's value (its last expression; None if it had none).

        Raises the cell's own exception (its original type, with the remote traceback) if the
        cell raised, :class:`JobFailedError` / :class:`JobCancelledError` if the job ended
        without a result, ``TimeoutError`` if it is still running after ``timeout`` seconds.
        """
        __tracebackhide__ = True
        res = self.load(timeout=timeout)
        if res.exception is not None:
            raise res.exception
        if res.has_value:
            return res.value
        if res.value_bundle is not None:
            raise ClusterError(f"the value of job {self.id[:8]} could not be sent back (it "
                               "does not pickle); it was shown as: "
                               + str(res.value_bundle.get("text/plain", "")))
        return None

    def outputs(self, timeout: float | None = None) -> dict[str, Any]:
        """The names the cell bound or changed, with their values (what a push would bind)."""
        return dict(self.load(timeout=timeout).values)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The cell's exception, the job's failure, or None if it completed."""
        try:
            res = self.load(timeout=timeout)
        except JobFailedError as e:
            return e
        return res.exception

    def add_done_callback(self, fn: Callable[[Job], Any]) -> None:
        """Call ``fn(job)`` once the job has ended (at once if it has; else from the monitor's
        thread: do not touch the namespace there)."""
        fired = threading.Event()

        def once(rec: JobRecord) -> None:
            if rec.state.final and not fired.is_set():
                fired.set()
                self._record = rec
                fn(self)

        rec = self.record
        if rec.state.final:
            once(rec)
        else:
            self.backend.monitor.track(rec, once)
            latest = self.record  # it may have ended between the read and the track
            if latest.state.final:
                once(latest)

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
        try:
            rec = self.record
        except Exception:
            rec = self._record
        native = f" #{rec.native_id}" if rec.native_id else ""
        return f"<Job {rec.id[:8]} {rec.name!r} on {rec.profile}{native}: {rec.state.value}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
        rec = self._record
        if rec.state.final and not rec.state.ok:
            p.text("\n" + format_error(rec, self.error))


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


def failure(backend: Backend, rec: JobRecord) -> Exception:
    """The error for a job that ended without a result: state, reason, log tail."""
    if rec.reason.startswith(INTEGRITY):
        return IntegrityError(f"job {rec.id[:8]}: {rec.reason}")
    err = error_of(rec, backend)
    cls = JobCancelledError if rec.state is JobState.CANCELLED else JobFailedError
    return cls(rec.id[:8], rec.state.value.replace("_", " "), explain(rec, err),
               err.get("log_tail", ""))


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


class JobInterrupted(KeyboardInterrupt):
    """The kernel was interrupted while a cell waited for its job, and the job was cancelled.

    A ``KeyboardInterrupt`` (so "run all" stops), shown as its one-line message: the frames
    of the library's wait loop are nobody's business.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self}"]


def interrupted(job: Job) -> JobInterrupted:
    """Cancel ``job`` after an interrupt; the exception that says so."""
    try:
        job.backend.cancel(job.record)
        final = job.wait(15)
        what = "cancelled" if final is JobState.CANCELLED else f"ended {final.value}"
    except KeyboardInterrupt:
        what = "being cancelled (interrupted again: not waiting for it)"
    except Exception as e:
        what = f"not cancelled ({type(e).__name__}: {e}); use %cluster cancel {job.id[:8]}"
    return JobInterrupted(f"interrupted; job {job.id[:8]} on {job.profile} {what}")


def publish_display(data: dict, metadata: dict) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data=data, metadata=metadata)


def apply_result(result: JobResult, namespace: dict) -> list[str]:
    """Push a job's values into ``namespace`` (see :mod:`.writeback`); returns what changed."""
    return writeback.apply(result, namespace)


def push(job: Job, namespace: dict, main: Any) -> tuple[JobResult, list[str]]:
    """Push a finished job into ``namespace``: load its verified result, bind, mutate and delete
    the names it changed, and mark it pushed in the journal. The one way every front end
    (the cell, ``--async``, ``%cluster result``, the panel) does it.

    Returns the result (its ``exception`` is the cell's, not raised here) and the names that
    changed. Raises :class:`JobFailedError` for a job that ended without a result.
    """
    result = job.load(namespace, main)
    names = apply_result(result, namespace)
    job.backend.journal.update(job.id, result_status="pushed")
    return result, names


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
            result, names = push(job, self.shell.user_ns, self.shell.user_module)
        except JobFailedError as e:
            print(f"clusterjupyter: {e}", file=sys.stderr)
            return
        except Exception as e:
            print(f"clusterjupyter: could not load the result of job {job.id[:8]}: {e}",
                  file=sys.stderr)
            return
        what = ", ".join(names) if names else "no names"
        if result.exception is not None:
            exc = result.exception
            print(f"clusterjupyter: job {job.id[:8]} ({job.name}) raised "
                  f"{type(exc).__name__}: {exc}; use %cluster result {job.id[:8]} to re-raise "
                  f"it here. Pushed: {what}", file=sys.stderr)
        else:
            print(f"clusterjupyter: job {job.id[:8]} ({job.name}) finished; pushed {what}")


def preview(cell: str) -> str:
    """The first lines of a cell, short enough for a listing."""
    text = "\n".join(cell.strip("\n").splitlines()[:PREVIEW_LINES])
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def job_json(rec: JobRecord, full: bool = False) -> dict[str, Any]:
    """A job for a listing (``full=False``: a preview instead of the cell, the failure's
    headline instead of its traceback and logs) or for one job (``full=True``)."""
    d = rec.to_json()
    d["preview"] = preview(rec.cell)
    if rec.state.final and not rec.state.ok:
        d["explanation"] = explain(rec)
    if not full:
        d.pop("cell", None)
        err = d.pop("error", None) or {}
        d["error"] = {k: err[k] for k in ("type", "message", "exit_code", "signal", "limit")
                      if k in err}
    return d


def queue(backend: Backend, all_users: bool = False) -> list[tuple[Any, JobRecord | None]]:
    """The scheduler's queue of ``backend``, each entry with its journal record if it is one of
    this user's jobs. The ``local`` scheduler sees every runner process on the machine: without
    ``all_users`` it lists only the jobs of this journal (not those of another
    ``CLUSTERJUPYTER_HOME``)."""
    entries = backend.scheduler.queue(all_users)
    ours: dict[str, JobRecord] = {}
    for r in backend.journal.list(None, backend.name, 1000):
        if r.native_id:
            ours[r.native_id] = r
    out = []
    for q in entries:
        rec = ours.get(q.native_id)
        if rec is None and backend.scheduler.name == "local" and not all_users:
            continue
        out.append((q, rec))
    return out


QUEUE_ACTIONS = ("cancel", "hold", "release")


def queue_action(backend: Backend, action: str, native_ids: list[str]) -> dict[str, str]:
    """Cancel, hold or release scheduler jobs; returns ``{native id: error}`` for those that
    failed (empty when all went through). A cancelled job of the journal is cancelled through
    the backend, so the journal records it as cancelled."""
    if action not in QUEUE_ACTIONS:
        raise ValueError(f"unknown queue action {action!r}; valid: {', '.join(QUEUE_ACTIONS)}")
    ours = {r.native_id: r for r in backend.journal.active(backend.name) if r.native_id}
    failed: dict[str, str] = {}
    for native_id in native_ids:
        try:
            rec = ours.get(native_id)
            if action == "cancel" and rec is not None:
                backend.cancel(rec)
            elif action == "cancel":
                backend.scheduler.cancel([native_id])
            else:
                getattr(backend.scheduler, action)(native_id)
        except Exception as e:
            failed[native_id] = f"{type(e).__name__}: {e}"
    return failed
