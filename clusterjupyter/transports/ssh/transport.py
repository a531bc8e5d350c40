"""The SSH transport: commands and files on a host reached over SSH, through one pooled
connection kept by :class:`~.retry.Link` (see the package docstring for what it promises)."""

from __future__ import annotations

import errno
import io
import posixpath
import uuid
from typing import IO, TYPE_CHECKING, Callable, Iterable, Sequence, TypeVar

from ...errors import TransportError
from ...serialize import Blob
from ..base import Completed, Progress, Transport
from .auth import Prompt, terminal_prompt
from .commands import run_command
from .config import SSHTarget, resolve
from .connection import Connection
from .remotefile import RemoteFile, chunks_from
from .retry import Link
from .sftp import O_CREAT, O_TRUNC, O_WRITE, Sftp
from .transfers import read_all, read_once, write_all, write_files

if TYPE_CHECKING:
    from ...profiles import Profile

T = TypeVar("T")


class SSHTransport(Transport):
    """Commands and files on a host reached over SSH."""

    shares_filesystem = False
    #: one SFTP stat round trip per check: about 0.5 ms of the host's time
    watch_interval = 0.02

    def __init__(self, target: SSHTarget, prompt: Prompt = terminal_prompt):
        self.target = target
        self.where = target.where
        self.link = Link(target, prompt)
        self._home: str | None = None

    @classmethod
    def from_profile(cls, profile: "Profile", prompt: Prompt = terminal_prompt) -> "SSHTransport":
        """The transport of a remote profile; ``prompt`` asks for passwords and passphrases
        (the caller knows whether a person can answer)."""
        if not profile.host:
            raise TransportError(f"profile {profile.name!r} has no host")
        return cls(resolve(profile.host, user=profile.user, port=profile.port,
                           identity_file=profile.identity_file,
                           known_hosts=profile.known_hosts, proxy_jump=profile.proxy_jump,
                           accept_unknown_host=profile.accept_unknown_host,
                           profile=profile.name), prompt)

    # -- the connection (kept by the link) ---------------------------------------------------
    @property
    def retries(self) -> int:
        """Reconnection attempts after a drop."""
        return self.link.retries

    @retries.setter
    def retries(self, n: int) -> None:
        self.link.retries = n

    @property
    def backoff(self) -> float:
        """The first wait between attempts (doubling), seconds."""
        return self.link.backoff

    @backoff.setter
    def backoff(self, seconds: float) -> None:
        self.link.backoff = seconds

    @property
    def connects(self) -> int:
        """How many connections were made (tests and benchmarks read it)."""
        return self.link.connects

    def connection(self) -> Connection:
        """The live connection, made (with retries) if there is none."""
        return self.link.connection()

    def close(self) -> None:
        self.link.close()

    def break_connection(self) -> None:
        """Cut the live connection abruptly (tests and benchmarks simulate a network drop)."""
        self.link.break_connection()

    # -- commands ----------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], input: bytes | None, timeout: float | None,
             retry: bool = False) -> Completed:
        """Run ``argv`` on the host once; after a reconnection it is run again only if
        ``retry`` (idempotent) or if it provably never reached the host."""
        args = list(argv)
        return self.link.call(args[0], lambda c: run_command(c, args, input, timeout),
                              idempotent=retry)

    def spawn(self, argv: Sequence[str], log_path: str) -> str:
        """Start ``argv`` detached (``nohup setsid``) and return its pid. Idempotent per
        ``log_path``: a retry after a dropped connection reports the process already started."""
        # shell builtins only, apart from the job itself: every fork costs here
        script = (
            'log=$1; shift; pidf="$log.pid"\n'
            'if ( set -C; : > "$pidf" ) 2>/dev/null; then\n'
            '  : >>"$log"\n'    # the log exists when spawn returns, as with the local transport
            '  if command -v setsid >/dev/null 2>&1; then\n'
            '    nohup setsid "$@" >>"$log" 2>&1 </dev/null &\n'
            '  else\n'
            '    nohup "$@" >>"$log" 2>&1 </dev/null &\n'
            '  fi\n'
            '  echo $! > "$pidf"; echo $!; exit 0\n'
            'fi\n'
            'i=0; until [ -s "$pidf" ]; do i=$((i+1)); [ $i -gt 300 ] && exit 75; sleep 0.1; done\n'
            'read -r pid < "$pidf"; echo "$pid"\n')
        done = self.run(["sh", "-c", script, "sh", log_path, *argv], retry=True)
        pid = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if not pid.isdigit():
            raise TransportError(f"could not start {argv[0]} on {self.where}: "
                                 f"{(done.stdout + done.stderr).strip()[:500]}")
        return pid

    # -- files -----------------------------------------------------------------------------
    def _sftp(self, what: str, fn: Callable[[Sftp], T]) -> T:
        return self.link.call(what, lambda c: fn(c.sftp()))

    def home(self) -> str:
        if self._home is None:
            self._home = self._sftp("home", lambda s: s.realpath("."))
        return self._home

    def expand(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            path = self.home() + path[1:]
        elif path.startswith("~"):
            user, _, rest = path[1:].partition("/")
            if not user.replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise TransportError(f"invalid user name in path {path!r}")
            done = self.run(["sh", "-c", 'eval "echo ~$1"', "sh", user], retry=True)
            path = done.stdout.strip() + ("/" + rest if rest else "")
        elif not path.startswith("/"):
            path = posixpath.join(self.home(), path)
        return posixpath.normpath(path)

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        def make(s: Sftp) -> None:
            try:
                s.mkdir(posixpath.normpath(path), mode)    # the parent usually exists
                return
            except OSError:
                pass
            todo = []
            p = posixpath.normpath(path)
            while p not in ("/", ""):
                try:
                    s.stat(p)
                    break
                except FileNotFoundError:
                    todo.append(p)
                    p = posixpath.dirname(p)
            for d in reversed(todo):
                try:
                    s.mkdir(d, mode)
                except OSError:
                    # created meanwhile by someone else is fine; anything else is not
                    try:
                        s.stat(d)
                    except FileNotFoundError:
                        raise OSError(errno.EACCES, f"cannot create directory {d} on "
                                      f"{self.where}", d) from None
        self._sftp("makedirs", make)

    def existing(self, paths: Iterable[str]) -> set[str]:
        paths = list(dict.fromkeys(paths))
        if not paths:
            return set()
        return set(self._sftp("stat", lambda s: s.stat_many(paths)))

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        paths = list(dict.fromkeys(paths))
        if not paths:
            return {}
        found = self._sftp("stat", lambda s: s.stat_many(paths))
        return {p: a.size or 0 for p, a in found.items()}

    def _tmp_name(self, path: str) -> str:
        d, base = posixpath.split(path)
        return posixpath.join(d, f".{base}.{uuid.uuid4().hex[:12]}.part")

    def write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self.write_many({path: (data, mode)})

    def write_many(self, files: dict[str, tuple[bytes, int]]) -> None:
        todo = [(self._tmp_name(path), path, data, mode) for path, (data, mode) in files.items()]
        self._sftp(f"write {', '.join(files)}", lambda s: write_files(s, todo))

    def put_blob(self, blob: Blob, path: str, progress: Progress | None = None) -> None:
        """Stream ``blob`` into a temporary file, then rename it to ``path``. After a broken
        connection the upload resumes at the end of what the server already has."""
        tmp = self._tmp_name(path)
        sent = [0]

        def put(s: Sftp) -> None:
            # resume after the last acknowledged write (every earlier write is acknowledged
            # too, since answers are awaited in order), if the server still has those bytes
            offset = 0
            if sent[0]:
                try:
                    offset = sent[0] if (s.stat(tmp).size or 0) >= sent[0] else 0
                except FileNotFoundError:
                    offset = 0
            flags = O_WRITE | O_CREAT | (0 if offset else O_TRUNC)
            h = s.open(tmp, flags, 0o600)
            try:
                if progress is not None and offset != sent[0]:
                    progress.update(offset - sent[0])
                sent[0] = offset

                def moved(n: int) -> None:
                    sent[0] += n
                    if progress is not None:
                        progress.update(n)

                write_all(s, h, chunks_from(blob, offset, s.max_write * 16), offset, moved)
            finally:
                try:
                    s.close(h)
                except OSError:
                    pass
            s.rename(tmp, path)

        try:
            self._sftp(f"upload {path}", put)
        except BaseException:
            conn = self.link.conn      # best effort, without reconnecting for it
            if conn is not None and conn.alive:
                try:
                    conn.sftp().remove(tmp)
                except Exception:
                    pass
            raise

    def rename(self, old: str, new: str) -> None:
        def move(s: Sftp) -> None:
            try:
                s.rename(old, new)
            except FileNotFoundError:
                s.stat(new)     # a repeat after a dropped connection: the first one went through

        self._sftp(f"rename {old}", move)

    def open(self, path: str) -> IO[bytes]:
        f = RemoteFile(self._sftp, path, self.retries, self.where)
        f.start()
        return io.BufferedReader(f, buffer_size=1 << 20)

    @staticmethod
    def _read_and_close(s: Sftp, h: bytes, offset: int, limit: int | None) -> bytes:
        try:
            return b"".join(read_all(s, h, offset, limit))
        finally:
            try:
                s.close(h)
            except OSError:
                pass

    def read(self, path: str) -> bytes:
        return self._sftp(f"read {path}",
                          lambda s: self._read_and_close(s, s.open_regular(path, self.where),
                                                         0, None))

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        def get(s: Sftp) -> bytes:
            try:
                h = s.open_regular(path, self.where)
            except FileNotFoundError:
                return b""
            if limit <= s.max_read:
                # two round trips: open, then read and close sent together
                return read_once(s, h, offset, limit)
            return self._read_and_close(s, h, offset, limit)

        return self._sftp(f"read {path}", get)

    def remove_tree(self, path: str) -> None:
        self.run(["rm", "-rf", "--", path], retry=True)

