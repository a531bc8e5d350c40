"""One poller per backend: notices state changes of all its active jobs without blocking the kernel.

Each tick it checks the jobs' ``started.json``/``state.json`` files through the transport (the
completion watch: a finished job is noticed within one tick, not at the next slow scheduler
query) and, less often, asks the scheduler about **all** active jobs in one call (queue reasons,
deaths the runner could not report). Intervals adapt: fast while a cell waits or a job is young,
slower for long-running jobs. Changes go to the journal and to listeners.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .failure import describe
from .journal import JobRecord
from .schedulers.base import NativeStatus, final_state
from .states import JobState

if TYPE_CHECKING:
    from .backends import Backend

log = logging.getLogger(__name__)
Listener = Callable[[JobRecord], None]

#: the journal's reason while a cancel is on its way (set by whichever process asked)
CANCEL_REQUESTED = "cancel requested"
#: seconds without scheduler or exit-file news before a vanished job is declared lost
VANISH_GRACE = 5.0
#: seconds after a job is first tracked before the scheduler is asked about it
FIRST_QUERY_DELAY = 1.0
#: seconds the scheduler gets to say why a runner was stopped by a signal (time limit? memory?)
SIGNAL_GRACE = 5.0
#: seconds a job a cell blocks on may sit with a reason it can never start for (a dependency
#: that failed, more time than the partition allows ...) before it is cancelled
NEVER_GRACE = 2.0


@dataclass
class _Tracked:
    record: JobRecord
    listeners: list[Listener] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0
    native: NativeStatus | None = None
    vanished_at: float | None = None
    ended_at: float | None = None         # the scheduler said COMPLETED, no exit file yet
    cancel_requested: bool = False
    since: float = field(default_factory=time.time)
    never_since: float | None = None      # pending with a reason that never clears


class Monitor:
    """Watches the active jobs of one backend from a daemon thread."""

    def __init__(self, backend: "Backend"):
        self.backend = backend
        self._jobs: dict[str, _Tracked] = {}
        self._lock = threading.Condition()
        self._tick_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._global_listeners: list[Listener] = []
        self._next_query = 0.0
        self._query_interval = backend.scheduler.poll_interval
        self.last_error: str = ""

    # -- public -----------------------------------------------------------------------------
    def track(self, record: JobRecord, listener: Listener | None = None) -> threading.Event:
        """Watch ``record`` until it is final; returns an event set when it is."""
        with self._lock:
            t = self._jobs.get(record.id)
            if t is None:
                # a job just submitted is pending: ask the scheduler after a moment (a short
                # job's exit file usually comes first, and over SSH a query costs a round trip
                # that would hold up the exit-file watch)
                first = time.time() + FIRST_QUERY_DELAY
                self._next_query = min(self._next_query, first) if self._jobs else first
                t = self._jobs[record.id] = _Tracked(record)
                self._query_interval = self.backend.scheduler.poll_interval
            if listener is not None:
                t.listeners.append(listener)
            if record.state.final:
                t.done.set()
            self._lock.notify_all()
            self._ensure_thread()
            return t.done

    def add_listener(self, listener: Listener) -> None:
        """Called (from the monitor thread) for every state change of every job."""
        self._global_listeners.append(listener)

    def waiting(self, job_id: str, on: bool) -> None:
        """A cell blocks on this job: watch it closely."""
        with self._lock:
            t = self._jobs.get(job_id)
            if t is not None:
                t.waiters += 1 if on else -1
                self._lock.notify_all()

    def cancel_requested(self, job_id: str) -> None:
        with self._lock:
            t = self._jobs.get(job_id)
            if t is not None:
                t.cancel_requested = True
                self._next_query = 0.0
                # ask again soon: the job may leave the queue only after a moment
                self._query_interval = self.backend.scheduler.poll_interval
                self._lock.notify_all()

    def active(self) -> list[JobRecord]:
        with self._lock:
            return [t.record for t in self._jobs.values()]

    def poll_once(self) -> None:
        """One tick, synchronously (also used by ``%cluster jobs`` for untracked jobs)."""
        self._tick(force_query=True)

    # -- the loop ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"clusterjupyter-monitor-{self.backend.name}")
            self._thread.start()

    def _interval(self) -> float:
        fast = self.backend.watch_interval
        with self._lock:
            if any(t.waiters for t in self._jobs.values()):
                young = fast
            else:
                young = fast * 4
            ages = [time.time() - t.since for t in self._jobs.values()]
        if not ages:
            return 1.0
        age = min(ages)
        # fast for young jobs, easing off to a few seconds for long ones
        return min(max(young, age / 20), 5.0 if young > fast else 1.0)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    if not self._lock.wait(timeout=60):
                        self._thread = None
                        return
            try:
                self._tick()
                self.last_error = ""
            except Exception as e:  # a failing poll must not kill the monitor
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("clusterjupyter monitor (%s): %s", self.backend.name, self.last_error)
                time.sleep(1.0)
            with self._lock:
                self._lock.wait(timeout=self._interval())

    def _tick(self, force_query: bool = False) -> None:
        with self._tick_lock:
            self._tick_locked(force_query)

    def _tick_locked(self, force_query: bool) -> None:
        with self._lock:
            tracked = list(self._jobs.values())
        if not tracked:
            return
        backend = self.backend
        files = []
        for t in tracked:
            paths = backend.paths(t.record)
            files += [paths.started, paths.state]
        present = backend.transport.watch(files)
        now = time.time()
        query = force_query or now >= self._next_query
        natives: dict[str, NativeStatus] = {}
        ids = [(t.record.native_id, t.record.id) for t in tracked if t.record.native_id]
        # (a job whose exit file appeared needs no query here: _finish asks the scheduler
        # itself when the runner did not complete, and a completed cell needs no scheduler)
        if query and ids:
            natives = backend.scheduler.status([i[0] for i in ids], [i[1] for i in ids])
            for t in tracked:
                t.native = natives.get(t.record.native_id or "", None)
            self._query_interval = min(self._query_interval * 1.5, 30.0)
            self._next_query = now + self._query_interval
        for t in tracked:
            paths = backend.paths(t.record)
            if paths.state in present:
                self._finish(t, self._read_state(paths.state))
                continue
            rec = t.record
            changes: dict = {}
            if paths.started in present and rec.state is JobState.PENDING:
                changes.update(state=JobState.RUNNING, reason="", started=self._started_at(t))
            if query and rec.native_id:
                native = natives.get(rec.native_id)
                if native is None:
                    t.vanished_at = t.vanished_at or now
                    if now - t.vanished_at > VANISH_GRACE:
                        # gone from the scheduler and no exit file appeared: look once more
                        if paths.state in backend.transport.existing([paths.state]):
                            self._finish(t, self._read_state(paths.state))
                        else:
                            self._finish(t, None)
                        continue
                else:
                    t.vanished_at = None
                    if native.state.final and native.state is not JobState.COMPLETED:
                        # killed before the runner could write (timeout, OOM, node failure …)
                        if now - t.since > 1 and paths.state not in \
                                backend.transport.existing([paths.state]):
                            self._finish(t, None)
                            continue
                    elif native.state is JobState.COMPLETED:
                        # ended, yet no exit file: the runner never ran (or the job was
                        # cancelled while queued; PBS wrappers say C for both); a shared
                        # filesystem gets a moment to show the file first
                        t.ended_at = t.ended_at or now
                        if now - t.ended_at > VANISH_GRACE and paths.state not in \
                                backend.transport.existing([paths.state]):
                            self._finish(t, None)
                            continue
                    elif native.state is JobState.PENDING and rec.state is JobState.PENDING:
                        if native.reason != rec.reason and rec.reason != CANCEL_REQUESTED:
                            changes["reason"] = native.reason
                        t.never_since = (t.never_since or now) if native.never else None
                        if t.never_since and t.waiters and now - t.never_since >= NEVER_GRACE:
                            # a blocked cell would wait for ever: say why, and let it go
                            self._give_up(t, native.reason)
                            continue
                    elif native.state is JobState.RUNNING and rec.state is JobState.PENDING \
                            and "state" not in changes:
                        changes.update(state=JobState.RUNNING, reason="",
                                       started=rec.started or now, host=native.host)
            if changes:
                self._change(t, **changes)

    # -- helpers ----------------------------------------------------------------------------
    def _read_state(self, path: str) -> dict | None:
        try:
            return json.loads(self.backend.transport.read(path))
        except (OSError, ValueError):
            return None

    def _started_at(self, t: _Tracked) -> float:
        try:
            doc = json.loads(self.backend.transport.read(self.backend.paths(t.record).started))
            return float(doc.get("time", time.time()))
        except (OSError, ValueError):
            return time.time()

    def _change(self, t: _Tracked, **changes: object) -> None:
        state = changes.get("state")
        if "reason" in changes and not (isinstance(state, JobState) and state.final):
            latest = self.backend.journal.get(t.record.id)
            if latest is not None and latest.reason == CANCEL_REQUESTED:
                changes.pop("reason")  # keep the cancel visible until the job ends
        self.backend.journal.update(t.record.id, **changes)
        for k, v in changes.items():
            setattr(t.record, k, v)
        self._emit(t)

    def _finish(self, t: _Tracked, runner: dict | None) -> None:
        if runner is not None and not runner.get("state", "").startswith("complet") \
                and t.record.native_id and (t.native is None or runner.get("signal")):
            # ask the scheduler why the runner stopped (timeout? out of memory?); a runner
            # stopped by a signal can write its exit file before the scheduler shows why
            # (SLURM: RUNNING, then COMPLETING/TIMEOUT), so give it a few moments
            deadline = time.time() + (SIGNAL_GRACE if runner.get("signal") else 0.0)
            while True:
                t.native = self.backend.scheduler.status(
                    [t.record.native_id], [t.record.id]).get(t.record.native_id)
                if t.native is None or t.native.state.final or time.time() >= deadline:
                    break
                time.sleep(0.25)
        # a cancel may come from another process (another kernel, the sidebar)
        latest = self.backend.journal.get(t.record.id)
        if latest is not None and latest.state.final:
            # another process (the kernel, the server) already recorded the end: keep its word
            t.record = latest
            with self._lock:
                self._jobs.pop(latest.id, None)
            t.done.set()
            self._emit(t)
            return
        cancelled = t.cancel_requested or (latest is not None
                                           and latest.reason == CANCEL_REQUESTED)
        state, reason, code = final_state(runner, t.native, cancelled)
        rec = t.record
        changes: dict = {"state": state, "reason": reason, "exit_code": code,
                         "finished": (runner or {}).get("finished") or time.time()}
        if runner is not None:
            changes["host"] = runner.get("host", rec.host)
            changes["started"] = runner.get("started") or rec.started
            if not runner.get("internal") and state is not JobState.CANCELLED \
                    and self.backend.has_result(rec):
                changes["result_status"] = "available"
        if state is not JobState.COMPLETED:
            # why it failed, kept with the job for every front end and process
            changes["error"] = describe(self.backend, rec, runner, state, reason, code)
        self._change(t, **changes)
        with self._lock:
            self._jobs.pop(rec.id, None)
        t.done.set()

    def _give_up(self, t: _Tracked, why: str) -> None:
        """Cancel a job that can never start, recording why."""
        rec = t.record
        try:
            self.backend.scheduler.cancel([rec.native_id or ""])
        except Exception as e:
            log.warning("clusterjupyter: cancelling job %s failed: %s", rec.native_id, e)
        self._change(t, state=JobState.CANCELLED, finished=time.time(),
                     reason=f"{why}; cancelled, since it could never start")
        with self._lock:
            self._jobs.pop(rec.id, None)
        t.done.set()

    def _emit(self, t: _Tracked) -> None:
        for listener in [*t.listeners, *self._global_listeners]:
            try:
                listener(t.record)
            except Exception:
                log.exception("clusterjupyter job listener failed")
