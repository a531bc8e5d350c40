"""Running one command on a connection: in a persistent shell, or on an exec channel of its own
(commands with input, and hosts that refuse a persistent shell)."""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable

import paramiko

from ...errors import TransportError
from ..base import Completed, quote_argv
from .connection import Connection
from .errors import Lost
from .shell import ShellGone

log = logging.getLogger(__name__)


def run_command(conn: Connection, argv: list[str], input: bytes | None,
                timeout: float | None) -> Completed:
    """Run ``argv`` once on ``conn``. Raises :class:`Lost` if the connection broke (``sent``:
    the command may have reached the host) and :class:`TransportError` on a timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if input is None and not conn.no_shell:
        try:
            return _in_shell(conn, argv, timeout, deadline)
        except Lost as e:
            if e.sent or not conn.alive:
                raise
            # the host refused the shell (a restricted account): one channel per command
            log.info("clusterjupyter: no persistent shell on %s; one channel per command",
                     conn.target.where)
            conn.no_shell = True
    return run_in_channel(conn, argv, input, timeout, deadline)


def _in_shell(conn: Connection, argv: list[str], timeout: float | None,
              deadline: float | None) -> Completed:
    try:
        shell = conn.acquire_shell(deadline)
    except socket.timeout:
        raise _timed_out(conn, argv, timeout) from None
    reuse = False
    try:
        code, out, err = shell.run(argv, deadline)
        reuse = True
    except socket.timeout:
        raise _timed_out(conn, argv, timeout) from None
    except ShellGone as e:
        raise Lost(e, sent=e.sent) from None
    finally:
        # a command cut short (timeout, interrupt) leaves the shell out of step: close it
        conn.release_shell(shell, reuse)
    return Completed(argv, code, out.decode(errors="replace"), err.decode(errors="replace"))


def _timed_out(conn: Connection, argv: list[str], timeout: float | None) -> TransportError:
    return TransportError(f"{argv[0]} did not finish within {timeout} s on "
                          f"{conn.target.where}: {quote_argv(argv)[:300]}")


def run_in_channel(conn: Connection, argv: list[str], input: bytes | None,
                   timeout: float | None, deadline: float | None) -> Completed:
    """Run ``argv`` on an exec channel of its own (the user's login shell starts each time)."""
    chan = conn.open_channel()
    try:
        try:
            chan.exec_command(quote_argv(argv))
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise Lost(e) from None
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            out = _drain(chan, chan.recv, deadline)
            err = _drain(chan, chan.recv_stderr, deadline)
            while not chan.exit_status_ready():
                if not chan.status_event.wait(_left(deadline)) and \
                        not chan.exit_status_ready():
                    raise socket.timeout()
            code = chan.recv_exit_status()
        except socket.timeout:
            raise _timed_out(conn, argv, timeout) from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise Lost(e) from None
        if code == -1 and not conn.alive:
            raise Lost("the connection closed before the command's exit status arrived")
    finally:
        chan.close()
    return Completed(argv, code, out.decode(errors="replace"), err.decode(errors="replace"))


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    return left


def _drain(chan: paramiko.Channel, recv: Callable[[int], bytes],
           deadline: float | None) -> bytes:
    parts: list[bytes] = []
    while True:
        chan.settimeout(_left(deadline))
        data = recv(1 << 16)
        if not data:
            return b"".join(parts)
        parts.append(data)

