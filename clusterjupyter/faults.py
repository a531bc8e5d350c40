"""Fault injection: a transport and a scheduler that fail the way real clusters fail, on purpose.

A profile turns it on (for a user who wants to see how a notebook copes, and for the fault
matrix test)::

    [profiles.flaky]
    host = "hpc-login"
    faults = {rate = 0.05, seed = 1, kinds = ["drop_before", "lost_answer", "vanish"]}

``rate`` is the chance that one operation (a command, a file operation, a scheduler call) meets
a fault, drawn from a generator seeded with ``seed``; ``kinds`` (default: all) are chosen among
those that apply to the operation. Polls that run every few milliseconds while a cell waits (the
exit-file watch, reading the live output) meet faults at a tenth of the rate. The faults, and
what the project must do about each:

* ``drop_before`` — the connection is cut just before a command or file operation: reconnect,
  run it once.
* ``drop_during`` — the connection is cut a few milliseconds into a command: repeat it if it
  is idempotent, else say it may or may not have run (never run it twice).
* ``drop_after`` — the command ran but the connection broke before its answer arrived: an
  idempotent command is asked again (and must give the same answer), any other is reported as
  "may or may not have run".
* ``lost_answer`` — ``drop_after`` aimed at a submission: the job exists, its id was lost; the
  repeat must find the same job, never submit a second one.
* ``hang`` — a command hangs past its timeout (``hang`` seconds stand for it) and is reported as
  not finishing; it did not run.
* ``truncate`` — a file transfer is cut part way (an upload after some acknowledged writes, a
  download after some bytes): it resumes where it stopped.
* ``vanish`` — a job disappears from the scheduler's queue without ever writing its exit file
  (killed with SIGKILL, then hidden from every status answer): it must end ``lost``, clearly.
* ``slow`` — the scheduler takes ``slow`` seconds longer to answer.

Connection faults cut the real connection (an SSH transport's socket is closed, as a network
drop would), so the transport's own recovery runs; on a transport without a connection they do
not apply. Every injected fault is recorded in :attr:`FaultPlan.log`.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar, cast

from .errors import ProfileError, TransportError
from .serialize import Blob
from .transports.base import Completed, Progress, Transport, quote_argv

if TYPE_CHECKING:
    from .schedulers.base import Scheduler

T = TypeVar("T")

CONNECTION_KINDS = ("drop_before", "drop_during", "drop_after")
KINDS = (*CONNECTION_KINDS, "lost_answer", "hang", "truncate", "vanish", "slow")
#: operations polled every few milliseconds (their rate is divided by POLL_DAMPING)
POLLS = ("watch", "read")
POLL_DAMPING = 10.0
#: which kinds can meet which operation
_COMMAND = ("drop_before", "drop_during", "drop_after", "hang")
_FILE = ("drop_before",)
_UPLOAD = ("drop_before", "truncate")
_DOWNLOAD = ("drop_before", "truncate")
_SUBMIT = ("lost_answer", "vanish", "slow")
_QUERY = ("slow",)


@dataclass
class Injected:
    """One fault that was injected."""

    kind: str
    operation: str
    time: float = field(default_factory=time.time)


@dataclass
class FaultPlan:
    """How often and which faults to inject (seeded), and the record of those injected."""

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    hang: float = 1.0           # seconds a hanging command holds its caller
    slow: float = 0.5           # seconds a slow scheduler adds
    log: list[Injected] = field(default_factory=list)

    def __post_init__(self) -> None:
        # one generator per operation, so that how often the monitor happens to poll does not
        # change which submissions meet which faults
        self._rngs: dict[str, random.Random] = {}
        self._lock = threading.Lock()

    def _rng(self, operation: str) -> random.Random:
        rng = self._rngs.get(operation)
        if rng is None:
            rng = self._rngs[operation] = random.Random(f"{self.seed}:{operation}")
        return rng

    @classmethod
    def parse(cls, value: Any, profile: str = "") -> "FaultPlan":
        """A plan from a profile's ``faults`` table; a bad value raises :class:`ProfileError`
        naming the valid choices."""
        if not isinstance(value, dict):
            raise ProfileError("must be a table like {rate = 0.1, seed = 1, kinds = [...]}",
                               profile, "faults")
        valid = ("rate", "seed", "kinds", "hang", "slow")
        for key in value:
            if key not in valid:
                raise ProfileError(f"unknown key {key!r}; valid keys: {', '.join(valid)}",
                                   profile, "faults")
        rate = value.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ProfileError(f"rate must be a number from 0 to 1, not {rate!r}", profile,
                               "faults")
        seed = value.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ProfileError(f"seed must be a whole number, not {seed!r}", profile, "faults")
        kinds = value.get("kinds", list(KINDS))
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
            raise ProfileError(f"kinds must be a list of: {', '.join(KINDS)}; got {kinds!r}",
                               profile, "faults")
        times = {}
        for key in ("hang", "slow"):
            v = value.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 600:
                raise ProfileError(f"{key} must be seconds from 0 to 600, not {v!r}", profile,
                                   "faults")
            times[key] = float(v)
        return cls(rate=float(rate), seed=seed, kinds=tuple(dict.fromkeys(kinds)),
                   hang=times["hang"], slow=times["slow"])

    def draw(self, operation: str, applicable: Sequence[str]) -> str | None:
        """The fault this operation meets, if any (recorded)."""
        kinds = [k for k in applicable if k in self.kinds]
        if not kinds:
            return None
        rate = self.rate / POLL_DAMPING if operation in POLLS else self.rate
        with self._lock:
            rng = self._rng(operation)
            if rng.random() >= rate:
                return None
            kind = rng.choice(kinds)
            self.log.append(Injected(kind, operation))
        return kind

    def uniform(self, a: float, b: float) -> float:
        with self._lock:
            return self._rng("uniform").uniform(a, b)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for item in list(self.log):
            out[item.kind] += 1
        return out


def _ambiguous(where: str, argv: Sequence[str]) -> TransportError:
    return TransportError(f"the connection to {where} broke while running {argv[0]} (injected "
                          "fault); it may or may not have run, so it was not run again")


class FaultyTransport(Transport):
    """A transport that injects the plan's faults into another one's operations."""

    def __init__(self, inner: Transport, plan: FaultPlan):
        self.inner = inner
        self.plan = plan
        self.where = inner.where
        self.shares_filesystem = inner.shares_filesystem
        self.watch_interval = inner.watch_interval
        self._lose_next = threading.local()

    def __getattr__(self, name: str) -> Any:     # what a concrete transport adds (connects …)
        return getattr(self.inner, name)

    @property
    def connects(self) -> int:   # (the base class defines it: __getattr__ would not be asked)
        return self.inner.connects

    # -- the faults --------------------------------------------------------------------------
    def _cut(self) -> bool:
        """Cut the inner transport's connection, as a network drop would (False: it has none)."""
        cut = getattr(self.inner, "break_connection", None)
        if cut is None:
            return False
        cut()
        return True

    def _applicable(self, kinds: Sequence[str]) -> Sequence[str]:
        if hasattr(self.inner, "break_connection"):
            return kinds
        return [k for k in kinds if k not in CONNECTION_KINDS and k != "truncate"]

    def lose_next_answer(self) -> None:
        """The next command or spawn from this thread loses its answer (``lost_answer``)."""
        self._lose_next.on = True

    def _take_lost(self) -> bool:
        on = getattr(self._lose_next, "on", False)
        self._lose_next.on = False
        return on

    def _command(self, argv: Sequence[str], run: Callable[[], T], retry: bool,
                 timeout: float | None) -> T:
        kind = "drop_after" if self._take_lost() and self._cut_possible() else \
            self.plan.draw(str(argv[0]), self._applicable(_COMMAND))
        if kind == "drop_before":
            self._cut()
        elif kind == "hang":
            time.sleep(self.plan.hang if timeout is None else min(self.plan.hang, timeout))
            limit = f"within {timeout} s" if timeout is not None else "in time"
            raise TransportError(f"{argv[0]} did not finish {limit} on {self.where} (injected "
                                 f"hang): {quote_argv(argv)[:300]}")
        elif kind == "drop_during":
            timer = threading.Timer(self.plan.uniform(0.0, 0.01), self._cut)
            timer.start()
            try:
                return run()
            finally:
                timer.cancel()
        elif kind == "drop_after":
            run()
            self._cut()
            if not retry:
                raise _ambiguous(self.where, argv)
            # what the transport does when an idempotent command's answer is lost: ask again
        return run()

    def _cut_possible(self) -> bool:
        return hasattr(self.inner, "break_connection")

    def _file_op(self, what: str, fn: Callable[[], T], kinds: Sequence[str] = _FILE) -> T:
        if self.plan.draw(what, self._applicable(kinds)) == "drop_before":
            self._cut()
        return fn()

    # -- commands ----------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], input: bytes | None, timeout: float | None,
             retry: bool = False) -> Completed:
        return self._command(argv, lambda: self.inner._run(argv, input, timeout, retry), retry,
                             timeout)

    def spawn(self, argv: Sequence[str], log_path: str) -> str:
        # starting is idempotent per log file, so a lost answer is asked again
        return self._command(["spawn", *argv], lambda: self.inner.spawn(argv, log_path), True,
                             60)

    # -- files -------------------------------------------------------------------------------
    def expand(self, path: str) -> str:
        return self._file_op("expand", lambda: self.inner.expand(path))

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        self._file_op("makedirs", lambda: self.inner.makedirs(path, mode))

    def existing(self, paths: Iterable[str]) -> set[str]:
        paths = list(paths)
        return self._file_op("stat", lambda: self.inner.existing(paths))

    def watch(self, paths: Iterable[str]) -> set[str]:
        paths = list(paths)
        return self._file_op("watch", lambda: self.inner.watch(paths))

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        paths = list(paths)
        return self._file_op("stat", lambda: self.inner.sizes(paths))

    def write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self._file_op("write", lambda: self.inner.write(path, data, mode))

    def write_many(self, files: dict[str, tuple[bytes, int]]) -> None:
        self._file_op("write", lambda: self.inner.write_many(files))

    def put_blob(self, blob: Blob, path: str, progress: Progress | None = None) -> None:
        kind = self.plan.draw("upload", self._applicable(_UPLOAD))
        if kind == "drop_before":
            self._cut()
        elif kind == "truncate":
            progress = _CuttingProgress(progress, blob.size, self.plan.uniform(0.0, 1.0),
                                        self._cut)
        self.inner.put_blob(blob, path, progress)

    def rename(self, old: str, new: str) -> None:
        self._file_op("rename", lambda: self.inner.rename(old, new))

    def open(self, path: str) -> IO[bytes]:
        kind = self.plan.draw("download", self._applicable(_DOWNLOAD))
        if kind == "drop_before":
            self._cut()
        f = self.inner.open(path)
        if kind == "truncate":
            return _CuttingReader(f, self._cut)     # type: ignore[return-value]
        return f

    def read(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        return self._file_op("read", lambda: self.inner.read_from(path, offset, limit))

    def remove_tree(self, path: str) -> None:
        self.inner.remove_tree(path)

    def close(self) -> None:
        self.inner.close()


class _CuttingProgress(Progress):
    """Passes progress on, and cuts the connection once ``fraction`` of an upload is across."""

    def __init__(self, outer: Progress | None, total: int, fraction: float,
                 cut: Callable[[], Any]):
        super().__init__(total, outer.label if outer else "upload")
        self.outer = outer
        self.at = int(total * fraction)
        self.cut: Callable[[], Any] | None = cut

    def update(self, n: int) -> None:
        super().update(n)
        if self.outer is not None:
            self.outer.update(n)
        if self.cut is not None and self.done >= self.at:
            cut, self.cut = self.cut, None
            threading.Thread(target=cut, daemon=True).start()

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()


class _CuttingReader:
    """A download whose connection is cut after its first read (it must resume)."""

    def __init__(self, f: IO[bytes], cut: Callable[[], Any]):
        self._f = f
        self._cut: Callable[[], Any] | None = cut

    def read(self, n: int = -1) -> bytes:
        if self._cut is None:
            return self._f.read(n)
        first = self._f.read(1 << 10 if n is None or n < 0 else min(n, 1 << 10))
        cut, self._cut = self._cut, None
        cut()
        if n is None or n < 0:
            return first + self._f.read()
        return first + (self._f.read(n - len(first)) if len(first) < n else b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_CuttingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class FaultyScheduler:
    """A scheduler that loses submission answers, lets jobs vanish and answers slowly."""

    def __init__(self, inner: Any, transport: FaultyTransport, plan: FaultPlan):
        self.inner = inner
        self.transport = transport
        self.plan = plan
        self.vanished: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _slow(self, kind: str | None) -> None:
        if kind == "slow":
            time.sleep(self.plan.slow)

    def submit(self, spec: Any) -> str:
        kind = self.plan.draw("submit", _SUBMIT)
        self._slow(kind)
        if kind == "lost_answer":
            self.transport.lose_next_answer()
        native = self.inner.submit(spec)
        if kind == "vanish":
            self._vanish(native)
        return native

    def _vanish(self, native: str) -> None:
        """Kill the job so it never writes its exit file, and hide it from the queue."""
        self.vanished.add(native)
        if self.inner.name == "local":      # the job's whole process group (setsid)
            self.transport.inner.run(["sh", "-c", 'kill -KILL -"$1" || kill -KILL "$1"', "sh",
                                      native], check=False, retry=True)
        else:
            self.inner.cancel([native])

    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict:
        self._slow(self.plan.draw("status", _QUERY))
        found = self.inner.status(native_ids, job_ids)
        return {k: v for k, v in found.items() if k not in self.vanished}

    def cancel(self, native_ids: Sequence[str]) -> None:
        self._slow(self.plan.draw("cancel", _QUERY))
        self.inner.cancel(native_ids)


def wrap(plan: FaultPlan, transport: Transport,
         make_scheduler: Callable[[Transport], "Scheduler"]) -> tuple[Transport, "Scheduler"]:
    """The faulty transport over ``transport`` and the scheduler built on it, wrapped too (the
    wrapper stands in for the scheduler: every other attribute is the scheduler's own)."""
    faulty = FaultyTransport(transport, plan)
    return faulty, cast("Scheduler", FaultyScheduler(make_scheduler(faulty), faulty, plan))
