"""One poller per profile: notices state changes of all its active jobs without blocking the kernel.

Each tick it checks the jobs' ``started.json``/``state.json`` files through the transport (the
completion watch: a finished job is noticed within one tick, not at the next slow scheduler
query) and, less often, asks the scheduler about **all** active jobs in one call (queue reasons,
deaths the runner could not report). Intervals adapt: fast while a cell waits or a job is young,
slower for long-running jobs. Changes go to the journal and to listeners.

What state a job is in is decided by :func:`decide`, a pure function of what one tick saw
(:class:`Facts`); the :class:`Monitor` only gathers the facts and carries out the decision.
The monitor is given what it uses — scheduler, transport, journal, the secret — and knows
nothing of the layers above it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .jobdir import IntegrityError, JobPaths, verify_exit
from .journal import Journal, JobRecord
from .schedulers.base import NativeStatus, Scheduler, final_state
from .states import JobState
from .transports.base import Transport

log = logging.getLogger(__name__)
Listener = Callable[[JobRecord], None]
#: what is known about why a job ended other than completed (kept with it in the journal):
#: ``describe(record, exit file or None, state, reason, exit code) -> dict``
Describe = Callable[[JobRecord, "dict | None", JobState, str, "int | None"], dict]

#: the journal's reason while a cancel is on its way (set by whichever process asked)
CANCEL_REQUESTED = "cancel requested"
#: how the reason of a job whose files failed verification starts
INTEGRITY = "integrity error"
#: seconds without scheduler or exit-file news before a vanished job is declared lost
VANISH_GRACE = 5.0
#: seconds after a job is first tracked before the scheduler is asked about it
FIRST_QUERY_DELAY = 1.0
#: seconds the scheduler gets to say why a runner was stopped by a signal (time limit? memory?)
SIGNAL_GRACE = 5.0
#: seconds between scheduler questions about a job whose runner was stopped
ASK_EVERY = 0.25
#: the largest exit file read (a runner's is well under 4 KiB: its reason is cut at 2,000
#: characters); one SFTP read over SSH
MAX_EXIT_FILE = 16 << 10
#: seconds a job a cell blocks on may sit with a reason it can never start for (a dependency
#: that failed, more time than the partition allows ...) before it is cancelled
NEVER_GRACE = 2.0


# -- the decision (pure) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Facts:
    """What the monitor knows about one active job at one moment."""

    state: JobState                       # the journal's: PENDING or RUNNING
    now: float
    since: float                          # when the monitor began tracking the job
    native_id: str | None = None
    reason: str = ""
    queried: bool = False                 # the scheduler was asked about it just now
    native: NativeStatus | None = None    # the scheduler's last answer (None: not in it)
    started: float | None = None          # started.json's time, once the file is there
    exit: dict[str, Any] | None = None    # the verified exit file
    forged: str = ""                      # why an exit file that is there failed verification
    cancel_requested: bool = False
    waiters: int = 0                      # cells blocked on the job
    # clocks carried from tick to tick (None: not running)
    vanished_at: float | None = None      # absent from the scheduler's answers since
    ended_at: float | None = None         # scheduler said COMPLETED, no exit file, since
    never_since: float | None = None      # pending for a reason that never clears, since
    stopped_at: float | None = None       # the runner was stopped; waiting for the why, since


@dataclass
class Decision:
    """What to do about one job; ``end`` set means it is over."""

    end: tuple[JobState, str, int | None] | None = None   # final state, reason, exit code
    changes: dict[str, Any] = field(default_factory=dict)  # journal changes while active
    cancel: str = ""          # cancel the scheduler's job, for this reason
    ask: bool = False         # ask the scheduler about it again soon
    clocks: dict[str, float | None] = field(default_factory=dict)


def needs_scheduler(exit: dict[str, Any] | None, cancel_requested: bool) -> bool:
    """Whether an exit file leaves the job's end to be explained by the scheduler: the runner
    was stopped (a signal, a broken job directory) and no cancel explains it."""
    if exit is None or cancel_requested or exit.get("cell_error"):
        return False
    return exit.get("state") in ("cancelled", "failed")


def decide(f: Facts) -> Decision:
    """The job's next state, given the scheduler's answer, the exit file and the job's age."""
    d = Decision(clocks={"vanished_at": f.vanished_at, "ended_at": f.ended_at,
                         "never_since": f.never_since, "stopped_at": f.stopped_at})
    if f.forged:
        d.end = (JobState.FAILED, f"{INTEGRITY}: {f.forged}; the job's real end is unknown",
                 None)
        if f.native_id and not (f.native is not None and f.native.state.final):
            d.cancel = d.end[1]
        return d
    if f.exit is not None:
        return _ended(f, d, f.exit)
    if f.started is not None and f.state is JobState.PENDING:
        d.changes.update(state=JobState.RUNNING, reason="", started=f.started)
    if f.queried and f.native_id:
        _scheduler_said(f, d, f.native)
    return d


def _ended(f: Facts, d: Decision, exit: dict[str, Any]) -> Decision:
    """The runner wrote its exit file: its word, explained by the scheduler when it was stopped."""
    native_final = f.native is not None and f.native.state.final
    if needs_scheduler(exit, f.cancel_requested) and f.native_id and not native_final:
        # a runner stopped by a signal writes its exit file before the scheduler shows why
        # (a time limit, memory): give the scheduler a few moments to say so
        if not f.queried:
            d.ask = True
            return d
        if exit.get("signal"):
            stopped_at = f.stopped_at if f.stopped_at is not None else f.now
            d.clocks["stopped_at"] = stopped_at
            if f.now - stopped_at < SIGNAL_GRACE:
                d.ask = True
                return d
    d.end = final_state(exit, f.native, f.cancel_requested)
    return d


def _scheduler_said(f: Facts, d: Decision, native: NativeStatus | None) -> None:
    """No exit file: what the scheduler's fresh answer means (``d`` is filled in)."""
    if native is None:
        vanished_at = f.vanished_at if f.vanished_at is not None else f.now
        d.clocks["vanished_at"] = vanished_at
        if f.now - vanished_at > VANISH_GRACE:
            d.end = final_state(None, None, f.cancel_requested)
        return
    d.clocks["vanished_at"] = None
    if native.state.final and native.state is not JobState.COMPLETED:
        # killed before the runner could write (timeout, OOM, node failure ...)
        if f.now - f.since > 1:
            d.end = final_state(None, native, f.cancel_requested)
    elif native.state is JobState.COMPLETED:
        # ended, yet no exit file: the runner never ran (or the job was cancelled while
        # queued; PBS wrappers say C for both); a shared filesystem gets a moment first
        ended_at = f.ended_at if f.ended_at is not None else f.now
        d.clocks["ended_at"] = ended_at
        if f.now - ended_at > VANISH_GRACE:
            d.end = final_state(None, native, f.cancel_requested)
    elif native.state is JobState.PENDING and f.state is JobState.PENDING:
        _still_queued(f, d, native)
    elif native.state is JobState.RUNNING and f.state is JobState.PENDING \
            and "state" not in d.changes:
        d.changes.update(state=JobState.RUNNING, reason="", started=f.now, host=native.host)


def _still_queued(f: Facts, d: Decision, native: NativeStatus) -> None:
    if native.reason != f.reason and f.reason != CANCEL_REQUESTED:
        d.changes["reason"] = native.reason
    never = (f.never_since or f.now) if native.never else None
    d.clocks["never_since"] = never
    if never is not None and f.waiters and f.now - never >= NEVER_GRACE:
        # a blocked cell would wait for ever: say why, and let it go
        d.end = (JobState.CANCELLED, f"{native.reason}; cancelled, since it could never start",
                 None)
        d.cancel = native.reason


# -- the loop -----------------------------------------------------------------------------------

@dataclass
class _Tracked:
    """The monitor's working state for one active job (the journal holds the record)."""

    record: JobRecord
    listeners: list[Listener] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0
    native: NativeStatus | None = None
    cancel_requested: bool = False
    since: float = field(default_factory=time.time)
    ask: bool = False
    asked_at: float = 0.0
    clocks: dict[str, float | None] = field(default_factory=dict)

    @property
    def paths(self) -> JobPaths:
        return JobPaths.from_dir(self.record.job_dir)


class Monitor:
    """Watches the active jobs of one profile from a daemon thread."""

    def __init__(self, name: str, scheduler: Scheduler, transport: Transport, journal: Journal,
                 secret: Callable[[], bytes], watch_interval: float = 0.01,
                 describe: Describe | None = None):
        self.name = name
        self.scheduler = scheduler
        self.transport = transport
        self.journal = journal
        self.secret = secret
        self.watch_interval = watch_interval
        self.describe = describe
        self._jobs: dict[str, _Tracked] = {}
        self._lock = threading.Condition()
        self._tick_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._global_listeners: list[Listener] = []
        self._next_query = 0.0
        self._query_interval = scheduler.poll_interval
        self.last_error: str = ""
        self._counted: dict[str, int] = {}

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
                self._query_interval = self.scheduler.poll_interval
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
                self._query_interval = self.scheduler.poll_interval
                self._lock.notify_all()

    def active(self) -> list[JobRecord]:
        with self._lock:
            return [t.record for t in self._jobs.values()]

    def poll_once(self) -> None:
        """One tick, synchronously (also used by ``%cluster jobs`` for untracked jobs)."""
        self._tick(force_query=True)

    def count(self, **extra: int) -> None:
        """Add what the scheduler and transport did since the last call (commands issued,
        reconnections) and ``extra`` to the profile's counters in the journal."""
        seen = {"scheduler_commands": self.scheduler.commands,
                "reconnects": max(self.transport.connects - 1, 0)}
        deltas = {k: v - self._counted.get(k, 0) for k, v in seen.items()}
        deltas.update(extra)
        if any(deltas.values()):
            self._counted = seen
            self.journal.count(self.name, deltas)

    # -- the loop ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"clusterjupyter-monitor-{self.name}")
            self._thread.start()

    def _interval(self) -> float:
        fast = self.watch_interval
        with self._lock:
            young = fast if any(t.waiters for t in self._jobs.values()) else fast * 4
            ages = [time.time() - t.since for t in self._jobs.values()]
        if not ages:
            return 1.0
        # fast for young jobs, easing off to a few seconds for long ones
        return min(max(young, min(ages) / 20), 5.0 if young > fast else 1.0)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    if not self._lock.wait(timeout=60):
                        self._thread = None
                        return
            try:
                self._tick()
                self.count()
                self.last_error = ""
            except Exception as e:  # a failing poll must not kill the monitor
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("clusterjupyter monitor (%s): %s", self.name, self.last_error)
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
        files = [p for t in tracked for p in (t.paths.started, t.paths.state)]
        present = self.transport.watch(files)
        exits = {t.record.id: self._read_exit(t) for t in tracked if t.paths.state in present}
        for t in tracked:
            if needs_scheduler(exits.get(t.record.id, (None, ""))[0], t.cancel_requested):
                # a runner stopped by a signal: a cancel another process asked for explains it
                latest = self.journal.get(t.record.id)
                t.cancel_requested = latest is not None and latest.reason == CANCEL_REQUESTED
        now = time.time()
        periodic = force_query or now >= self._next_query
        # a job whose runner said how it ended needs no scheduler answer (a sweep's finished
        # elements would otherwise send the tick's query on to accounting)
        settled = {i for i, (e, _) in exits.items() if e is not None and (
            e.get("state") == "completed" or e.get("cell_error"))}
        ask = [t for t in tracked if t.record.native_id and t.record.id not in settled and (
            periodic or (now - t.asked_at >= ASK_EVERY and (t.ask or needs_scheduler(
                exits.get(t.record.id, (None, ""))[0], t.cancel_requested))))]
        if ask:
            answer = self.scheduler.status([t.record.native_id or "" for t in ask],
                                           [t.record.id for t in ask])
            for t in ask:
                t.native = answer.get(t.record.native_id or "")
                t.asked_at = now
        if periodic and any(t.record.native_id for t in tracked):
            self._query_interval = min(self._query_interval * 1.5, 30.0)
            self._next_query = now + self._query_interval
        asked = {t.record.id for t in ask}
        for t in tracked:
            exit, forged = exits.get(t.record.id, (None, ""))
            started = self._started_at(t) if (t.paths.started in present and exit is None
                                              and t.record.state is JobState.PENDING) else None
            self._apply(t, self._facts(t, now, t.record.id in asked, started, exit, forged))

    def _facts(self, t: _Tracked, now: float, queried: bool, started: float | None,
               exit: dict | None, forged: str) -> Facts:
        rec = t.record
        return Facts(state=rec.state, now=now, since=t.since, native_id=rec.native_id,
                     reason=rec.reason, queried=queried, native=t.native, started=started,
                     exit=exit, forged=forged, cancel_requested=t.cancel_requested,
                     waiters=t.waiters, **t.clocks)  # type: ignore[arg-type]

    def _apply(self, t: _Tracked, facts: Facts) -> None:
        d = decide(facts)
        if d.end is not None:
            latest = self.journal.get(t.record.id)
            if latest is not None and latest.state.final:
                # another process (the kernel, the server) already recorded the end: keep it
                t.record = latest
                self._done(t)
                self._emit(t)
                return
            if latest is not None and latest.reason == CANCEL_REQUESTED \
                    and not facts.cancel_requested:
                # the cancel came from another process (another kernel, the sidebar)
                t.cancel_requested = True
                d = decide(replace(facts, cancel_requested=True))
            elif facts.exit is None and not facts.forged and facts.queried:
                # gone from the scheduler: the exit file may have come meanwhile
                if t.paths.state in self.transport.existing([t.paths.state]):
                    exit, forged = self._read_exit(t)
                    d = decide(replace(facts, exit=exit, forged=forged))
        t.clocks = d.clocks
        t.ask = d.ask
        if d.cancel:
            try:
                self.scheduler.cancel([t.record.native_id or ""])
            except Exception as e:
                log.warning("clusterjupyter: cancelling job %s failed: %s",
                            t.record.native_id, e)
        if d.end is not None:
            self._end(t, d.end, facts.exit if not facts.forged else None)
        elif d.changes:
            self._change(t, **d.changes)

    # -- helpers ----------------------------------------------------------------------------
    def _read_exit(self, t: _Tracked) -> tuple[dict | None, str]:
        """The verified exit file, or (None, why it does not verify)."""
        try:
            data = self.transport.read_from(t.paths.state, 0, MAX_EXIT_FILE + 1)
        except OSError as e:  # (a passing filesystem hiccup: look again at the next tick)
            log.info("clusterjupyter: cannot read %s yet: %s", t.paths.state, e)
            return None, ""
        if not data:
            return None, ""   # not there after all (a shared filesystem's stale listing)
        if len(data) > MAX_EXIT_FILE:
            return None, f"the exit file state.json is larger than {MAX_EXIT_FILE} bytes"
        try:
            return verify_exit(self.secret(), t.record.id, data), ""
        except IntegrityError as e:
            return None, str(e)

    def _started_at(self, t: _Tracked) -> float:
        try:
            doc = json.loads(self.transport.read_from(t.paths.started, 0, MAX_EXIT_FILE))
            return float(doc.get("time", time.time()))
        except (OSError, ValueError, TypeError, AttributeError):
            return time.time()

    def _change(self, t: _Tracked, **changes: Any) -> None:
        state = changes.get("state")
        if "reason" in changes and not (isinstance(state, JobState) and state.final):
            latest = self.journal.get(t.record.id)
            if latest is not None and latest.reason == CANCEL_REQUESTED:
                changes.pop("reason")  # keep the cancel visible until the job ends
        self.journal.update(t.record.id, **changes)
        for k, v in changes.items():
            setattr(t.record, k, v)
        self._emit(t)

    def _end(self, t: _Tracked, end: tuple[JobState, str, int | None],
             exit: dict | None) -> None:
        state, reason, code = end
        rec = t.record
        changes: dict[str, Any] = {"state": state, "reason": reason, "exit_code": code,
                                   "finished": (exit or {}).get("finished") or time.time()}
        if exit is not None:
            changes["host"] = exit.get("host", rec.host)
            changes["started"] = exit.get("started") or rec.started
            if exit.get("result") and not exit.get("internal") \
                    and state is not JobState.CANCELLED:
                changes["result_status"] = "available"
        if state is not JobState.COMPLETED and self.describe is not None:
            # why it failed, kept with the job for every front end and process
            changes["error"] = self.describe(rec, exit, state, reason, code)
        self._change(t, **changes)
        self._done(t)

    def _done(self, t: _Tracked) -> None:
        with self._lock:
            self._jobs.pop(t.record.id, None)
        t.done.set()

    def _emit(self, t: _Tracked) -> None:
        for listener in [*t.listeners, *self._global_listeners]:
            try:
                listener(t.record)
            except Exception:
                log.exception("clusterjupyter job listener failed")
