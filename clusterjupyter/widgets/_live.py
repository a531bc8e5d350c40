"""Keeping widgets current from one background thread, without ever polling a scheduler.

:class:`Hub` is a process-wide daemon thread. Live widgets (panels, per-cell status lines)
subscribe to it; it holds them through weak references only, so a widget that is closed or
garbage-collected simply drops out, and the thread ends when nobody is left. Each tick it calls
``subscriber._tick(events)``: the widget re-reads the journal (one cheap SQLite query) and sends
what changed. ``events`` holds the ids of jobs a :class:`~clusterjupyter.monitor.Monitor`
reported a change for since the last tick: the hub listens to every monitor it meets
(``Monitor.add_listener``) and wakes at once on an event, so state changes show instantly.

Scheduler state comes only from the monitors. For active jobs no monitor in this process follows
yet (submitted by another kernel, or before a restart), :meth:`Hub.refresh` hands them to their
backend's ``refresh()``, which tracks them in the monitor (one batched scheduler call per
profile per monitor tick). Anything that may touch a transport or a scheduler runs in a worker
thread (:class:`Background`), never on the hub's thread and never on the kernel's main thread.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..journal import JobRecord
    from ..monitor import Monitor

log = logging.getLogger(__name__)


class Hub:
    """The one updater thread of this process (see the module docstring)."""

    #: seconds between ticks when no monitor event arrives
    tick = 0.5
    #: seconds the thread lingers without subscribers before it ends
    linger = 30.0

    def __init__(self) -> None:
        self._subs: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._events: set[str] = set()
        self._thread: threading.Thread | None = None
        self._monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()
        self._refreshing: set[str] = set()
        self._logged: dict[int, str] = {}
        #: profile -> last problem refreshing it (shown by the panel)
        self.errors: dict[str, str] = {}

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, obj: Any) -> None:
        """Call ``obj._tick(events) -> bool`` every tick until it returns False or is gone."""
        with self._lock:
            self._subs.add(obj)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="clusterjupyter-widgets")
                self._thread.start()
        self._wake.set()

    def unsubscribe(self, obj: Any) -> None:
        with self._lock:
            self._subs.discard(obj)

    def subscribers(self) -> list[Any]:
        with self._lock:
            return list(self._subs)

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def poke(self) -> None:
        """Tick now (after a user action)."""
        self._wake.set()

    # -- monitors ---------------------------------------------------------------------------
    def listen(self, monitor: Monitor) -> None:
        """Receive ``monitor``'s state-change events (registered once per monitor)."""
        with self._lock:
            if monitor in self._monitors:
                return
            self._monitors.add(monitor)
        monitor.add_listener(self._on_event)

    def _on_event(self, rec: JobRecord) -> None:
        # called on the monitor's thread: note the id and return at once
        with self._lock:
            self._events.add(rec.id)
        self._wake.set()

    def refresh(self, records: Iterable[JobRecord]) -> None:
        """Have the backends follow these active jobs if no monitor here does yet."""
        from ..backends import backend_for

        groups: dict[str, list[JobRecord]] = {}
        for r in records:
            if not r.state.final:
                groups.setdefault(r.profile, []).append(r)
        for name, group in groups.items():
            try:
                backend = backend_for(name)
            except Exception as e:
                self.errors[name] = f"{type(e).__name__}: {e}"
                continue
            self.listen(backend.monitor)
            if backend.monitor.last_error:
                self.errors[name] = backend.monitor.last_error
            else:
                self.errors.pop(name, None)
            tracked = {r.id for r in backend.monitor.active()}
            new = [r for r in group if r.id not in tracked]
            with self._lock:
                if not new or name in self._refreshing:
                    continue
                self._refreshing.add(name)
            threading.Thread(target=self._refresh_one, args=(name, backend, new), daemon=True,
                             name=f"clusterjupyter-refresh-{name}").start()

    def _refresh_one(self, name: str, backend: Any, records: list[JobRecord]) -> None:
        from .. import api

        def failed(profile: str, e: Exception) -> None:
            self.errors[profile] = f"{type(e).__name__}: {e}"

        try:
            api.refresh_jobs(records, on_error=failed)
        finally:
            with self._lock:
                self._refreshing.discard(name)
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        idle_since: float | None = None
        while True:
            self._wake.wait(self.tick)
            self._wake.clear()
            with self._lock:
                events, self._events = self._events, set()
                subs = list(self._subs)
                if not subs:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > self.linger:
                        self._thread = None
                        return
                    continue
            idle_since = None
            self._tick_all(subs, events)
            del subs  # hold subscribers only while ticking them

    def _tick_all(self, subs: list[Any], events: set[str]) -> None:
        for obj in subs:
            try:
                keep = obj._tick(events)
            except Exception as e:  # a failing widget must not stop the others
                keep = True
                text = f"{type(e).__name__}: {e}"
                if self._logged.get(id(obj)) != text:
                    self._logged[id(obj)] = text
                    log.warning("clusterjupyter widget update failed: %s", text, exc_info=True)
            if keep is False:
                self.unsubscribe(obj)


hub = Hub()


class Background:
    """Runs one call at a time in a daemon thread, so a slow cluster never piles up threads.

    ``submit`` while a call runs: dropped (returns False), or with ``coalesce=True`` kept as
    the one call to run next (a newer one replaces it) — for "show the latest" requests.
    """

    def __init__(self, name: str):
        self.name = name
        self._cond = threading.Condition()
        self._running = False
        self._pending: tuple[Callable[..., Any], tuple, Any] | None = None

    @property
    def busy(self) -> bool:
        return self._running

    def submit(self, fn: Callable[..., Any], *args: Any,
               on_error: Callable[[BaseException], Any] | None = None,
               coalesce: bool = False) -> bool:
        with self._cond:
            if self._running:
                if coalesce:
                    self._pending = (fn, args, on_error)
                    return True
                return False
            self._running = True
        threading.Thread(target=self._run, args=((fn, args, on_error),), daemon=True,
                         name=f"clusterjupyter-{self.name}").start()
        return True

    def _run(self, job: tuple[Callable[..., Any], tuple, Any] | None) -> None:
        while job is not None:
            fn, args, on_error = job
            try:
                fn(*args)
            except BaseException as e:  # reported to the widget, never raised in a thread
                if on_error is not None:
                    try:
                        on_error(e)
                    except Exception:
                        log.exception("clusterjupyter: error handler failed")
                else:
                    log.warning("clusterjupyter %s: %s: %s", self.name, type(e).__name__, e)
            with self._cond:
                job, self._pending = self._pending, None
                if job is None:
                    self._running = False
                    self._cond.notify_all()

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until no call is running or pending (tests, shutdown); True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running, timeout)


def close_tree(widget: Any) -> None:
    """Close ``widget`` and every widget below it (ipywidgets closes only the one)."""
    for child in getattr(widget, "children", ()) or ():
        close_tree(child)
    close_widget(widget)


def close_widget(widget: Any) -> None:
    """``widget.close()``, tolerating a comm its manager no longer knows.

    That happens outside a kernel when ``ipykernel.ipkernel`` is imported after the widget was
    made (importing it swaps ``comm.get_comm_manager`` for a new manager).
    """
    try:
        widget.close()
    except KeyError:
        widget.comm = None
