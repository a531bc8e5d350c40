"""The transport contract: run commands and move files on the machine where jobs run.

A transport knows nothing about schedulers. Two exist: :class:`~.local.LocalTransport` (this
machine: filesystem + subprocess) and :class:`~.ssh.SSHTransport` (paramiko). Paths are POSIX
strings on the target machine. Commands are argument lists; a transport that must go through a
shell (SSH) quotes every argument.
"""

from __future__ import annotations

import abc
import errno
import shlex
import stat
from dataclasses import dataclass
from typing import IO, Iterable, Sequence

from ..errors import ClusterError, CommandError
from ..serialize import Blob


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class Transport(abc.ABC):
    """Run commands and move files on one target machine.

    Every external command goes through :meth:`run`; it raises :class:`CommandError` (carrying
    the exit code, stdout and stderr) when ``check`` is true and the command fails. A concrete
    transport implements the hooks (``_run``, the file operations); :meth:`run` is never
    overridden.
    """

    #: a short label for messages ("this machine", "user@host")
    where: str = ""
    #: the job files are on this machine's filesystem (paths are local paths)
    shares_filesystem: bool = False
    #: seconds between exit-file checks while a young job's cell waits (the monitor eases off
    #: from there as jobs age); one check costs what :meth:`watch` costs
    watch_interval: float = 0.02

    @abc.abstractmethod
    def _run(self, argv: Sequence[str], input: bytes | None, timeout: float | None,
             retry: bool = False) -> Completed:
        """Run ``argv`` and return its result (never raise for a non-zero exit). ``retry``: as
        in :meth:`run`."""

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = 60,
            check: bool = True, retry: bool = False) -> Completed:
        """Run ``argv``. ``retry``: the command is idempotent, so a transport that lost its
        connection while it ran may run it again; without it a command that may have reached
        the target is never repeated (a transport that cannot lose a connection ignores it)."""
        done = self._run([str(a) for a in argv], input, timeout, retry)
        if check and done.returncode != 0:
            raise CommandError(done.argv, done.returncode, done.stdout, done.stderr, self.where)
        return done

    def shell(self, script: str, *args: str, check: bool = True,
              timeout: float | None = 60) -> Completed:
        """Run a POSIX ``sh`` script; ``args`` become ``$1 …`` (quoted, never interpolated)."""
        return self.run(["sh", "-c", script, "sh", *args], check=check, timeout=timeout)

    @abc.abstractmethod
    def spawn(self, argv: Sequence[str], log_path: str) -> str:
        """Start ``argv`` detached from this session (survives the kernel), output to
        ``log_path`` (which exists when this returns); return its process id."""

    # -- files --------------------------------------------------------------------------------
    @abc.abstractmethod
    def expand(self, path: str) -> str:
        """Absolute form of ``path`` on the target (``~`` expanded)."""

    @abc.abstractmethod
    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create ``path`` and its parents; ``mode`` applies to the directories created."""

    @abc.abstractmethod
    def existing(self, paths: Iterable[str]) -> set[str]:
        """The subset of ``paths`` that exist (one round trip where the transport allows)."""

    @property
    def connects(self) -> int:
        """Connections made so far (one that reconnects counts each; the metrics read it)."""
        return 0

    def watch(self, paths: Iterable[str]) -> set[str]:
        """The exit-file watch: which of the jobs' start and exit files ``paths`` exist now, in
        one round trip; called every :attr:`watch_interval` while a cell waits."""
        return self.existing(paths)

    @abc.abstractmethod
    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """Sizes of the ``paths`` that exist (missing ones are left out)."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` atomically (temporary name, then rename)."""

    def write_many(self, files: dict[str, tuple[bytes, int]]) -> None:
        """Write several small files (path -> (data, mode)), each atomically; a transport with
        round trips sends them together."""
        for path, (data, mode) in files.items():
            self.write(path, data, mode)

    @abc.abstractmethod
    def put_blob(self, blob: Blob, path: str, progress: "Progress | None" = None) -> None:
        """Write a blob to ``path`` atomically, streaming its parts (no copy in memory)."""

    @abc.abstractmethod
    def rename(self, old: str, new: str) -> None:
        """Move ``old`` to ``new`` atomically, replacing ``new`` if it exists."""

    @abc.abstractmethod
    def open(self, path: str) -> IO[bytes]:
        """Open the regular file ``path`` for reading (binary); anything else (a FIFO, a
        directory) raises :class:`NotRegularFile` without blocking."""

    def read(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    @abc.abstractmethod
    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of ``path`` from ``offset`` (b"" if missing or nothing new)."""

    def tail(self, path: str, lines: int | None) -> str:
        """The last ``lines`` lines of a text file ('' if it does not exist)."""
        size = self.sizes([path]).get(path)
        if size is None:
            return ""
        start = 0 if lines is None else max(0, size - 256 * max(lines, 1) - 4096)
        text = self.read_from(path, start, size - start).decode(errors="replace")
        if lines is None:
            return text
        return "".join(text.splitlines(True)[-lines:]) if lines else ""

    def remove_tree(self, path: str) -> None:
        self.run(["rm", "-rf", "--", path])

    def close(self) -> None:  # noqa: B027  (optional hook: most transports hold nothing)
        """Release connections (the transport may be used again afterwards)."""


class NotRegularFile(ClusterError, OSError):
    """A path that should name a regular file names a FIFO, a directory, a device ... (opening
    it for reading could block for ever)."""

    def __init__(self, path: str, kind: str, where: str = ""):
        loc = f" on {where}" if where else ""
        self.message = f"{path}{loc} is {kind}, not a regular file: refusing to read it"
        OSError.__init__(self, errno.EINVAL, self.message, path)

    def __str__(self) -> str:
        return self.message


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages ("a FIFO", "a directory" ...)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


class Progress:
    """Receives byte counts while a large blob is transferred."""

    def __init__(self, total: int, label: str):
        self.total = total
        self.label = label
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        pass


def quote_argv(argv: Sequence[str]) -> str:
    """The command line a shell must see to run exactly ``argv``."""
    return shlex.join(argv)
