"""Reading a remote file: requests in flight ahead of the reader, surviving reconnects."""

from __future__ import annotations

import io
from typing import Any, Callable, Iterator

from ...errors import TransportError
from ...serialize import Blob
from .errors import Lost
from .sftp import Sftp
from .transfers import read_all

#: ``call(what, fn)``: ``fn(sftp session)`` with reconnection (the transport's)
SftpCall = Callable[[str, Callable[[Sftp], Any]], Any]


def chunks_from(blob: Blob, offset: int, size: int) -> Iterator[memoryview]:
    """The blob's bytes from ``offset``, as views of at most ``size`` bytes (no copies)."""
    pos = 0
    for part in blob.parts:
        view = memoryview(part).cast("B")
        n = len(view)
        if pos + n <= offset:
            pos += n
            continue
        start = max(0, offset - pos)
        for i in range(start, n, size):
            yield view[i:i + size]
        pos += n


class RemoteFile(io.RawIOBase):
    """A remote file read with requests in flight ahead of the reader; survives reconnects."""

    def __init__(self, call: SftpCall, path: str, retries: int, where: str):
        super().__init__()
        self._call = call
        self._retries = retries
        self._where = where
        self._path = path
        self._pos = 0
        self._buf = b""
        self._bufpos = 0
        self._eof = False
        self._sftp: Sftp | None = None
        self._handle: bytes | None = None
        self._iter: Iterator[bytes] | None = None
        self._reopened = 0

    def start(self) -> None:
        def op(s: Sftp) -> None:
            self._sftp = s
            self._handle = s.open_regular(self._path, self._where)
            self._iter = read_all(s, self._handle, self._pos, None)

        self._call(f"open {self._path}", op)

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while True:
            try:
                assert self._iter is not None
                self._buf = next(self._iter)
                self._bufpos = 0
                return True
            except StopIteration:
                self._eof = True
                return False
            except Lost as e:
                self._release()
                self._reopened += 1
                if self._reopened > self._retries:
                    raise TransportError(f"the connection to {self._where} keeps breaking "
                                         f"while reading {self._path}: {e}") from None
                self.start()    # reconnects (bounded) and reopens at the current position

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._bufpos >= len(self._buf):
            if self._eof or not self._fill():
                return 0
        n = min(len(view), len(self._buf) - self._bufpos)
        view[:n] = self._buf[self._bufpos:self._bufpos + n]
        self._bufpos += n
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = [self._buf[self._bufpos:]] if self._bufpos < len(self._buf) else []
        self._pos += sum(len(p) for p in parts)
        self._buf, self._bufpos = b"", 0
        while not self._eof and self._fill():
            parts.append(self._buf)
            self._pos += len(self._buf)
            self._buf, self._bufpos = b"", 0
        return b"".join(parts)

    def _release(self) -> None:
        it, self._iter = self._iter, None
        if it is not None:
            try:
                it.close()  # type: ignore[attr-defined]
            except Exception:
                pass
        h, self._handle = self._handle, None
        s = self._sftp
        if h is not None and s is not None and s.alive:
            try:
                s.close(h)
            except Exception:
                pass

    def close(self) -> None:
        if not self.closed:
            self._release()
        super().close()
