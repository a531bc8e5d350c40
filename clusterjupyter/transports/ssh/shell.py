"""Commands through a persistent remote shell (one fork per command instead of one login)."""

from __future__ import annotations

import select
import socket
import time
import uuid
from typing import Sequence

import paramiko

from ..base import quote_argv
from .errors import Lost

class Shell:
    """One long-lived POSIX ``sh`` on the host, running the commands written to its stdin.

    An exec channel per command costs a channel round trip plus the start of the user's login
    shell, which over SSH sources ``.bashrc`` even when not interactive (module systems, conda
    and pyenv make that 0.1–1 s on many hosts). A command written to a shell that is already
    running costs one fork. Each command runs in a subshell with stdin from ``/dev/null``, so
    nothing it does (``cd``, exports, reading stdin) reaches the next one. Its end is marked on
    stdout (with the exit status) and on stderr by a random token the command never sees.
    """

    def __init__(self, chan: paramiko.Channel, deadline: float | None):
        self.chan = chan
        self._out = bytearray()
        self._err = bytearray()
        try:
            # what the login shell's startup files print is read and dropped below
            try:
                self.chan.exec_command("exec /bin/sh")
            except (OSError, EOFError, paramiko.SSHException) as e:
                # the connection broke as the shell was asked for: nothing has run
                raise ShellGone(e) from None
            token = uuid.uuid4().hex
            self._write(f"printf '%s\\n' {token}; printf '%s\\n' {token} >&2\n")
            mark = f"{token}\n".encode()
            self._until(self._out, mark, deadline)
            self._until(self._err, mark, deadline)
        except ShellGone as e:
            self.close()
            raise Lost(f"cannot start a shell on the host: {e}", sent=False) from None
        except BaseException:
            self.close()
            raise

    def _write(self, text: str) -> None:
        try:
            self.chan.sendall(text.encode())
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ShellGone(e) from None

    def _until(self, buf: bytearray, mark: bytes, deadline: float | None) -> bytes:
        """Read both streams until ``mark`` is in ``buf``; return what came before it (and drop
        it and the mark from ``buf``)."""
        while True:
            i = buf.find(mark)
            if i >= 0:
                before = bytes(buf[:i])
                del buf[:i + len(mark)]
                return before
            left = None if deadline is None else deadline - time.monotonic()
            try:
                if self._pull(left):
                    continue
            except (OSError, ValueError, EOFError, paramiko.SSHException) as e:
                # a channel closed under us (EBADF from its pipe, end of file)
                raise ShellGone(e) from None
            if left is not None and left <= 0:
                raise socket.timeout()

    def _pull(self, left: float | None) -> bool:
        """Move what arrived into the buffers; wait up to ``left`` (at most 1 s) if nothing did.
        Whether anything moved."""
        chan = self.chan
        moved = False
        if chan.recv_ready():
            self._out += chan.recv(1 << 20)
            moved = True
        if chan.recv_stderr_ready():
            self._err += chan.recv_stderr(1 << 20)
            moved = True
        if moved:
            return True
        if chan.closed or chan.eof_received or chan.exit_status_ready():
            # drain what is left before calling the shell gone
            if not (chan.recv_ready() or chan.recv_stderr_ready()):
                raise ShellGone("the shell on the host ended")
            return True
        if left is None or left > 0:
            select.select([chan], [], [], 1.0 if left is None else min(left, 1.0))
        return False

    def run(self, argv: Sequence[str], deadline: float | None) -> tuple[int, bytes, bytes]:
        token = uuid.uuid4().hex
        self._write(f"( {quote_argv(argv)}\n) </dev/null\n"
                    f"printf '\\n{token} %d\\n' $?; printf '\\n{token}\\n' >&2\n")
        try:
            out = self._until(self._out, f"\n{token} ".encode(), deadline)
            status = self._until(self._out, b"\n", deadline)
            err = self._until(self._err, f"\n{token}\n".encode(), deadline)
        except ShellGone as e:
            e.sent = True
            raise
        return int(status), out, err

    @property
    def alive(self) -> bool:
        return not (self.chan.closed or self.chan.eof_received or self.chan.exit_status_ready())

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass


class ShellGone(Exception):
    """The persistent shell ended. ``sent``: a command had been written to it."""

    def __init__(self, cause: BaseException | str, sent: bool = False):
        self.sent = sent
        super().__init__(str(cause) or type(cause).__name__)

