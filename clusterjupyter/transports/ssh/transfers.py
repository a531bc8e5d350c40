"""Pipelined SFTP transfers: many requests in flight, over one :class:`~.sftp.Sftp` session."""

from __future__ import annotations

import collections
import struct
from typing import Callable, Iterable, Iterator, Sequence

from .sftp import (
    CLOSE, DATA, EXTENDED, FX_EOF, O_CREAT, O_TRUNC, O_WRITE, READ, REMOVE, STATUS, WRITE,
    Request, Sftp, get_str, pack_str,
)

#: bytes of SFTP write/read requests kept in flight
PIPELINE_BYTES = 8 << 20


def write_files(s: Sftp, files: Sequence[tuple[str, str, bytes, int]]) -> None:
    """Write small files, each through its temporary name then a rename, in two round
    trips for all of them: every open in flight at once, then every write, close and
    rename. The server handles one channel's requests in order. ``files``: (temporary
    path, path, data, mode)."""
    opens = [(tmp, s.send_open(tmp, O_WRITE | O_CREAT | O_TRUNC, mode))
             for tmp, _, _, mode in files]
    handles: list[tuple[str, bytes]] = []
    failure: OSError | None = None
    for tmp, req in opens:
        try:
            handles.append((tmp, s.handle(req, tmp)))
        except OSError as e:
            failure = failure or e
    if failure is not None:
        # leave nothing behind (and be done with it before the caller looks)
        cleanup = [s.send(typ, pack_str(arg)) for tmp, h in handles
                   for typ, arg in ((CLOSE, h), (REMOVE, tmp))]
        for req in cleanup:
            s.wait(req)
        raise failure
    rename = "posix-rename@openssh.com" in s.extensions
    checks: list[tuple[Request, str, str]] = []
    for (tmp, path, data, _), (_, h) in zip(files, handles, strict=True):
        hd = pack_str(h)
        view = memoryview(data)
        for start in range(0, len(view), s.max_write):
            piece = view[start:start + s.max_write]
            checks.append((s.send(WRITE, hd, struct.pack(">QI", start, len(piece)),
                                     piece), "write", tmp))
        checks.append((s.send(CLOSE, hd), "close", tmp))
        if rename:
            checks.append((s.send(EXTENDED, pack_str("posix-rename@openssh.com"), pack_str(tmp),
                                     pack_str(path)), "rename", path))
    for req, what, path in checks:
        typ, data = s.wait(req)
        if failure is None:
            try:
                s.check(typ, data, what, path)
            except OSError as e:
                failure = e
    if failure is not None:
        raise failure
    if not rename:
        for tmp, path, _, _ in files:
            s.rename(tmp, path)


def read_once(s: Sftp, handle: bytes, offset: int, n: int) -> bytes:
    """One read of at most ``n`` bytes, the close of ``handle`` sent right behind it."""
    hd = pack_str(handle)
    req = s.send(READ, hd, struct.pack(">QI", offset, n))
    s.forget(s.send(CLOSE, hd))
    typ, data = s.wait(req)
    if typ == STATUS and struct.unpack_from(">I", data, 0)[0] == FX_EOF:
        return b""
    if typ != DATA:
        s.check(typ, data, "read")
    return get_str(data, 0)[0]

def write_all(s: Sftp, handle: bytes, chunks: Iterable[bytes | memoryview], offset: int,
              progress: Callable[[int], None] | None = None) -> int:
    """Write ``chunks`` from ``offset`` with many requests in flight; returns the end offset."""
    hd = pack_str(handle)
    step = s.max_write
    depth = max(4, PIPELINE_BYTES // step)
    flight: collections.deque[tuple[Request, int]] = collections.deque()

    def settle() -> None:
        req, n = flight.popleft()
        typ, data = s.wait(req)
        s.check(typ, data, "write")
        if progress is not None:
            progress(n)

    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), step):
            piece = view[start:start + step]
            while len(flight) >= depth:
                settle()
            flight.append((s.send(WRITE, hd, struct.pack(">QI", offset, len(piece)),
                                     piece), len(piece)))
            offset += len(piece)
    while flight:
        settle()
    return offset

def read_all(s: Sftp, handle: bytes, offset: int, limit: int | None) -> Iterator[bytes]:
    """Yield the data from ``offset`` (up to ``limit`` bytes), reading ahead."""
    step = s.max_read
    depth = 1
    flight: collections.deque[tuple[Request, int, int]] = collections.deque()
    end = None if limit is None else offset + limit
    nxt = offset
    hd = pack_str(handle)
    try:
        while True:
            while len(flight) < depth and (end is None or nxt < end):
                n = step if end is None else min(step, end - nxt)
                flight.append((s.send(READ, hd, struct.pack(">QI", nxt, n)), nxt, n))
                nxt += n
            if not flight:
                return
            req, at, asked = flight.popleft()
            typ, data = s.wait(req)
            if typ == STATUS and struct.unpack_from(">I", data, 0)[0] == FX_EOF:
                return
            if typ != DATA:
                s.check(typ, data, "read")
            chunk = get_str(data, 0)[0]
            if chunk:
                yield chunk
            if len(chunk) < asked:
                # a short read: drop what was read ahead, continue where this one ended
                for r, _, _ in flight:
                    s.forget(r)
                flight.clear()
                nxt = at + len(chunk)
                if not chunk:
                    return
            else:
                depth = min(depth * 2, max(2, PIPELINE_BYTES // step))
    finally:
        for r, _, _ in flight:
            s.forget(r)

