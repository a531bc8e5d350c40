"""A thread-safe, pipelining SFTP version 3 client on one paramiko channel.

paramiko's own client serializes requests per file; here any thread sends requests under a send
lock and a reader thread hands each answer to its waiting request by id, so a large transfer and
the monitor's small requests share one session. Bulk transfers built on it are in
:mod:`.transfers`.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import struct
import threading
from dataclasses import dataclass
from typing import Sequence

import paramiko

from ..base import NotRegularFile, file_kind
from .errors import Lost

INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
SETSTAT, FSETSTAT, REMOVE, MKDIR, REALPATH, STAT, RENAME = 9, 10, 13, 14, 16, 17, 18
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, \
    200, 201
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED = 0, 1, 2, 3
O_READ, O_WRITE, O_CREAT, O_TRUNC, O_EXCL = 0x1, 0x2, 0x8, 0x10, 0x20
A_SIZE, A_UIDGID, A_PERMISSIONS, A_ACMODTIME, A_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000
ERRNO = {FX_NO_SUCH_FILE: errno.ENOENT, FX_PERMISSION_DENIED: errno.EACCES}


def pack_str(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def get_str(buf: bytes, off: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, off)
    return buf[off + 4:off + 4 + n], off + 4 + n


@dataclass
class Attrs:
    size: int | None = None
    mode: int | None = None

    @property
    def regular(self) -> bool:
        """A regular file (a server that sends no mode is trusted)."""
        return self.mode is None or stat_mod.S_ISREG(self.mode)

    @property
    def kind(self) -> str:
        return file_kind(self.mode or 0)


def _parse_attrs(buf: bytes, off: int = 0) -> Attrs:
    (flags,) = struct.unpack_from(">I", buf, off)
    off += 4
    a = Attrs()
    if flags & A_SIZE:
        (a.size,) = struct.unpack_from(">Q", buf, off)
        off += 8
    if flags & A_UIDGID:
        off += 8
    if flags & A_PERMISSIONS:
        (a.mode,) = struct.unpack_from(">I", buf, off)
    return a


class Request:
    __slots__ = ("event", "type", "data")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.type = 0
        self.data = b""


class Sftp:
    """A thread-safe, pipelining SFTP v3 client on one paramiko channel.

    Requests from any thread are sent under a send lock and answered by id: a reader thread
    hands each response to its waiting request. Anything that breaks the channel fails every
    waiting request with :class:`Lost`; status errors become ``OSError`` (``FileNotFoundError``
    for a missing file) and never count as a lost connection.
    """

    def __init__(self, channel: paramiko.Channel, timeout: float = 120.0):
        self.chan = channel
        self.timeout = timeout
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, Request] = {}
        self._next_id = 1
        self._dead: Lost | None = None
        self._buf = bytearray()
        self._send_raw(struct.pack(">IBI", 5, INIT, 3))
        typ, payload = self._read_packet()
        if typ != VERSION:
            raise Lost(f"the SFTP server answered {typ} to INIT", sent=False)
        self.extensions: dict[str, bytes] = {}
        off = 4
        while off < len(payload):
            name, off = get_str(payload, off)
            data, off = get_str(payload, off)
            self.extensions[name.decode(errors="replace")] = data
        self.max_write = 32 * 1024 - 1024
        self.max_read = 32 * 1024 - 1024
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name="clusterjupyter-sftp")
        self._reader.start()
        if "limits@openssh.com" in self.extensions:
            try:
                typ, data = self.call(EXTENDED, pack_str("limits@openssh.com"))
                if typ == EXTENDED_REPLY:
                    _, max_read, max_write, _ = struct.unpack_from(">QQQQ", data, 0)
                    self.max_read = int(min(max_read or self.max_read, 1 << 20))
                    self.max_write = int(min(max_write or self.max_write, 1 << 20))
            except OSError:
                pass

    # -- framing ---------------------------------------------------------------------------
    def _send_raw(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self.chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            self.fail(Lost(e))
            raise Lost(e) from None
        except BaseException as e:
            # interrupted part way through a packet (KeyboardInterrupt): the stream is out of
            # step, so this session is finished; the next operation opens another one
            self.fail(Lost(f"interrupted while sending ({type(e).__name__})"))
            raise

    def _recv_exact(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            data = self.chan.recv(max(n - len(buf), 1 << 18))
            if not data:
                raise EOFError("the SFTP channel was closed")
            buf += data
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _read_packet(self) -> tuple[int, bytes]:
        try:
            (n,) = struct.unpack(">I", self._recv_exact(4))
            body = self._recv_exact(n)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise Lost(e) from None
        return body[0], body[1:]

    def _read_loop(self) -> None:
        try:
            while True:
                typ, payload = self._read_packet()
                (rid,) = struct.unpack_from(">I", payload, 0)
                with self._lock:
                    req = self._pending.pop(rid, None)
                if req is not None:
                    req.type, req.data = typ, payload[4:]
                    req.event.set()
        except Lost as e:
            self.fail(e)
        except Exception as e:  # a malformed packet: the session cannot continue
            self.fail(Lost(e))

    def fail(self, why: Lost) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = why
            pending, self._pending = self._pending, {}
        for req in pending.values():
            req.event.set()
        try:
            self.chan.close()
        except Exception:
            pass

    @property
    def alive(self) -> bool:
        return self._dead is None and not self.chan.closed

    # -- requests --------------------------------------------------------------------------
    def send(self, typ: int, *parts: bytes | memoryview) -> Request:
        req = Request()
        with self._lock:
            if self._dead is not None:
                raise Lost(self._dead.cause, sent=False)
            rid = self._next_id
            self._next_id = (rid + 1) & 0xFFFFFFFF
            self._pending[rid] = req
        size = 5 + sum(len(p) for p in parts)
        self._send_raw(b"".join((struct.pack(">IBI", size, typ, rid), *parts)))
        return req

    def wait(self, req: Request) -> tuple[int, bytes]:
        if not req.event.wait(self.timeout):
            self.fail(Lost(f"no SFTP answer within {self.timeout:.0f} s"))
        if not req.type:
            raise Lost(self._dead.cause if self._dead else "SFTP session closed")
        return req.type, req.data

    def forget(self, req: Request) -> None:
        """Drop interest in a request's answer (it is discarded when it arrives)."""
        with self._lock:
            for rid, r in list(self._pending.items()):
                if r is req:
                    del self._pending[rid]
                    break

    def call(self, typ: int, *parts: bytes) -> tuple[int, bytes]:
        return self.wait(self.send(typ, *parts))

    @staticmethod
    def check(typ: int, data: bytes, what: str, path: str = "") -> None:
        """Raise OSError for a failure status; accept OK."""
        if typ != STATUS:
            raise OSError(errno.EPROTO, f"unexpected SFTP answer {typ} to {what}", path)
        (code,) = struct.unpack_from(">I", data, 0)
        if code == FX_OK:
            return
        try:
            msg = get_str(data, 4)[0].decode(errors="replace")
        except struct.error:
            msg = ""
        err = ERRNO.get(code, errno.EIO)
        raise OSError(err, f"{what}: {msg or os.strerror(err)}", path)

    # -- operations ------------------------------------------------------------------------
    def stat(self, path: str) -> Attrs:
        typ, data = self.call(STAT, pack_str(path))
        if typ == ATTRS:
            return _parse_attrs(data)
        self.check(typ, data, "stat", path)
        raise OSError(errno.EPROTO, "stat gave no attributes", path)

    def stat_many(self, paths: Sequence[str]) -> dict[str, Attrs]:
        """Attributes of the paths that exist (all requests in flight at once)."""
        out = {}
        reqs = [(p, self.send(STAT, pack_str(p))) for p in paths]
        for path, req in reqs:
            typ, data = self.wait(req)
            if typ == ATTRS:
                out[path] = _parse_attrs(data)
        return out

    def mkdir(self, path: str, mode: int) -> None:
        typ, data = self.call(MKDIR, pack_str(path), struct.pack(">II", A_PERMISSIONS, mode))
        self.check(typ, data, "mkdir", path)

    def send_open(self, path: str, flags: int, mode: int | None = None) -> Request:
        attrs = struct.pack(">II", A_PERMISSIONS, mode) if mode is not None \
            else struct.pack(">I", 0)
        return self.send(OPEN, pack_str(path), struct.pack(">I", flags), attrs)

    def handle(self, req: Request, path: str) -> bytes:
        typ, data = self.wait(req)
        if typ == HANDLE:
            return get_str(data, 0)[0]
        self.check(typ, data, "open", path)
        raise OSError(errno.EPROTO, "open gave no handle", path)

    def open(self, path: str, flags: int, mode: int | None = None) -> bytes:
        return self.handle(self.send_open(path, flags, mode), path)

    def open_regular(self, path: str, where: str = "") -> bytes:
        """Open ``path`` for reading if it is a regular file (the server would block opening a
        FIFO, and with it every request behind it)."""
        attrs = self.stat(path)
        if not attrs.regular:
            raise NotRegularFile(path, attrs.kind, where)
        return self.open(path, O_READ)

    def close(self, handle: bytes) -> None:
        typ, data = self.call(CLOSE, pack_str(handle))
        self.check(typ, data, "close")

    def remove(self, path: str) -> None:
        typ, data = self.call(REMOVE, pack_str(path))
        self.check(typ, data, "remove", path)

    def rename(self, old: str, new: str) -> None:
        """Atomic replace (posix-rename@openssh.com), else remove + rename."""
        if "posix-rename@openssh.com" in self.extensions:
            typ, data = self.call(EXTENDED, pack_str("posix-rename@openssh.com"), pack_str(old),
                                  pack_str(new))
            self.check(typ, data, "rename", new)
            return
        typ, data = self.call(RENAME, pack_str(old), pack_str(new))
        if typ == STATUS and struct.unpack_from(">I", data, 0)[0] != FX_OK:
            try:
                self.remove(new)
            except FileNotFoundError:
                pass
            typ, data = self.call(RENAME, pack_str(old), pack_str(new))
        self.check(typ, data, "rename", new)

    def realpath(self, path: str) -> str:
        typ, data = self.call(REALPATH, pack_str(path))
        if typ == NAME:
            return get_str(data, 4)[0].decode()
        self.check(typ, data, "realpath", path)
        raise OSError(errno.EPROTO, "realpath gave no name", path)
