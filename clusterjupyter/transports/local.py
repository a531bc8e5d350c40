"""This machine as a transport: the filesystem and subprocesses."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from typing import IO, Iterable, Sequence

from ..jobdir import write_atomic
from ..serialize import Blob
from .base import Completed, NotRegularFile, Progress, Transport, file_kind


class LocalTransport(Transport):
    where = "this machine"
    shares_filesystem = True
    #: one stat per file: cheap enough to look often
    watch_interval = 0.01

    def __init__(self) -> None:
        #: exit status of processes this transport spawned, once they end (pid -> returncode;
        #: negative = killed by that signal)
        self.exited: dict[str, int] = {}

    def _run(self, argv: Sequence[str], input: bytes | None, timeout: float | None,
             retry: bool = False) -> Completed:
        try:
            p = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
        except FileNotFoundError as e:
            return Completed(list(argv), 127, "", f"{argv[0]}: command not found ({e})")
        return Completed(list(argv), p.returncode, p.stdout.decode(errors="replace"),
                         p.stderr.decode(errors="replace"))

    def spawn(self, argv: Sequence[str], log_path: str) -> str:
        with open(log_path, "ab") as log:
            p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True)
        # reap it when it ends (no zombie while the kernel lives) and keep its exit status
        def reap() -> None:
            self.exited[str(p.pid)] = p.wait()

        threading.Thread(target=reap, daemon=True, name=f"reap-{p.pid}").start()
        return str(p.pid)

    def expand(self, path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def existing(self, paths: Iterable[str]) -> set[str]:
        return {p for p in paths if os.path.exists(p)}

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        out = {}
        for p in paths:
            try:
                out[p] = os.stat(p).st_size
            except OSError:
                pass
        return out

    def write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        write_atomic(path, data, mode)

    def put_blob(self, blob: Blob, path: str, progress: Progress | None = None) -> None:
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in blob.chunks():
                    f.write(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def rename(self, old: str, new: str) -> None:
        os.replace(old, new)

    def open(self, path: str) -> IO[bytes]:
        return open_regular(path)

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        try:
            with open_regular(path) as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""


def open_regular(path: str) -> IO[bytes]:
    """Open a regular file for reading; a FIFO (whose open would wait for a writer), a
    directory or a device raises :class:`NotRegularFile` at once."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, file_kind(mode))
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
