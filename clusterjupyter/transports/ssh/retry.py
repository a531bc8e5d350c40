"""The retry policy: one live connection kept, remade with bounded retries and backoff, and what
to do when it breaks under an operation (repeat it, or say it may have run)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from ...errors import TransportError
from .auth import Prompt, no_prompt
from .config import SSHTarget
from .connection import Connection
from .errors import Fatal, Lost

log = logging.getLogger(__name__)
T = TypeVar("T")

#: longest wait between two attempts, seconds
MAX_BACKOFF = 5.0


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before attempt number ``attempt`` (1 = the first repeat)."""
    return min(backoff * 2 ** (attempt - 1), MAX_BACKOFF) if attempt > 0 else 0.0


def after_loss(sent: bool, idempotent: bool, attempt: int, retries: int) -> str:
    """What to do when the connection broke under an operation (``attempt``: tries so far):
    ``"retry"``, ``"ambiguous"`` (it may have run and must not be repeated) or ``"give up"``."""
    if sent and not idempotent:
        return "ambiguous"
    return "retry" if attempt <= retries else "give up"


class Link:
    """The live connection to one target, remade when it breaks."""

    def __init__(self, target: SSHTarget, prompt: Prompt = no_prompt, retries: int = 6,
                 backoff: float = 0.25):
        self.target = target
        self.prompt = prompt
        #: reconnection attempts after a drop, and the first backoff (doubling) in seconds
        self.retries = retries
        self.backoff = backoff
        #: how many connections were made (tests and benchmarks read it)
        self.connects = 0
        self.conn: Connection | None = None
        self._lock = threading.RLock()

    @property
    def where(self) -> str:
        return self.target.where

    def connection(self) -> Connection:
        """The live connection, made (with retries) if there is none."""
        conn = self.conn
        if conn is not None and conn.alive:
            return conn
        with self._lock:
            conn = self.conn
            if conn is not None and conn.alive:
                return conn
            if conn is not None:
                conn.close()
                self.conn = None
            last: BaseException | None = None
            for attempt in range(self.retries + 1):
                time.sleep(backoff_delay(self.backoff, attempt))
                try:
                    conn = Connection(self.target, prompt=self.prompt)
                except Fatal:
                    raise
                except Lost as e:
                    last = e
                    log.info("clusterjupyter: connecting to %s failed (%s), attempt %d",
                             self.where, e, attempt + 1)
                    continue
                self.conn = conn
                self.connects += 1
                return conn
            raise TransportError(f"cannot connect to {self.where} (profile "
                                 f"{self.target.profile!r}) after {self.retries + 1} attempts: "
                                 f"{last}")

    def drop(self, conn: Connection) -> None:
        with self._lock:
            if self.conn is conn:
                self.conn = None
        conn.close()

    def call(self, what: str, fn: Callable[[Connection], T], idempotent: bool = True) -> T:
        """``fn(connection)``, repeated on a new connection after a drop as the policy allows."""
        attempt = 0
        while True:
            conn = self.connection()
            try:
                return fn(conn)
            except Lost as e:
                self.drop(conn)
                attempt += 1
                verdict = after_loss(e.sent, idempotent, attempt, self.retries)
                if verdict == "ambiguous":
                    raise TransportError(
                        f"the connection to {self.where} broke while running {what} ({e}); it "
                        "may or may not have run, so it was not run again") from None
                if verdict == "give up":
                    raise TransportError(f"the connection to {self.where} keeps breaking "
                                         f"({what}: {e}); gave up after {attempt} tries") from None
                log.info("clusterjupyter: connection to %s lost during %s (%s); reconnecting",
                         self.where, what, e)
                time.sleep(backoff_delay(self.backoff, attempt))

    def close(self) -> None:
        with self._lock:
            conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def break_connection(self) -> None:
        """Cut the live connection abruptly, as a network drop would."""
        conn = self.conn
        if conn is not None and conn.transport is not None:
            try:
                conn.transport.sock.close()
            except Exception:
                pass
