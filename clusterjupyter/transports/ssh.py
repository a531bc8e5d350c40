"""A remote host as a transport: one paramiko connection per profile, commands and SFTP over it.

What it promises (see :class:`~.base.Transport` for the contract):

* **One connection, shared.** One paramiko ``Transport`` and one SFTP session per
  :class:`SSHTransport`, used concurrently by the kernel thread and the monitor thread. SFTP
  requests from several threads are multiplexed by request id (:class:`_Sftp`), so a large
  upload never blocks the monitor's small requests for long.
* **Commands cost a fork, not a login.** Commands are written to long-lived remote ``sh``
  processes (:class:`_Shell`, one per concurrent caller, at most ``SHELLS_PER_CONNECTION``):
  about 1 ms each, where an exec channel per command pays for the user's login shell and its
  startup files every time (0.1–0.15 s on the test host, often more on clusters with module
  systems). A host that refuses them gets one exec channel per command.
* **Configuration like OpenSSH.** ``~/.ssh/config`` (HostName, User, Port, IdentityFile,
  IdentitiesOnly, ProxyJump, ProxyCommand, UserKnownHostsFile, HostKeyAlias, ConnectTimeout,
  ServerAliveInterval); the profile's ``user``/``port``/``identity_file``/``proxy_jump`` win.
  Keys: the profile's and config's identity files, then ssh-agent, then the default key files.
  A password or keyboard-interactive answer is asked with :func:`getpass.getpass` only when a
  person can answer (the kernel's main thread with stdin allowed, or a terminal), and never kept.
* **Host keys are verified** before any credential is sent, against ``~/.ssh/known_hosts`` (or
  the config's ``UserKnownHostsFile``), the profile's ``known_hosts`` and the global
  ``/etc/ssh/ssh_known_hosts``. An unknown host is refused with its fingerprint and how to
  trust it, unless the profile sets ``accept_unknown_host`` (the key is then recorded in the
  profile's ``known_hosts``, else ``~/.ssh/known_hosts``). A changed key is always refused.
* **Reconnects by itself.** A dropped connection is re-established with bounded retries and
  backoff; idempotent work (file operations, ``run(..., retry=True)``) is then repeated, an
  upload resumes after its last acknowledged write. A command run with ``retry=False`` (the
  default) is repeated only if it provably never reached the server; otherwise a
  :class:`TransportError` says it may or may not have run. Schedulers make submission itself
  idempotent (see :meth:`~clusterjupyter.schedulers.base.Scheduler.call_once`).
* **Fast bulk transfers.** Uploads and downloads are pipelined SFTP requests of the largest size
  the server accepts (``limits@openssh.com``), in large SSH packets, over an AES-GCM cipher when
  both sides have it (``benchmarks/bench_ssh.py`` compares with OpenSSH's scp).
"""

from __future__ import annotations

import base64
import collections
import errno
import getpass
import hashlib
import io
import logging
import os
import posixpath
import select
import shlex
import socket
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import paramiko

from ..errors import TransportError
from ..serialize import Blob
from .base import Completed, Progress, Transport, quote_argv

if TYPE_CHECKING:
    from ..profiles import Profile

log = logging.getLogger(__name__)
T = TypeVar("T")

#: cipher order: AES-GCM needs no separate MAC and is the cheapest with AES-NI
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr", "aes192-ctr")
#: our receive window per channel (downloads stream without waiting for window adjustments)
WINDOW_SIZE = 64 << 20
#: largest packet we accept: big packets cut per-packet costs of downloads (2.3x on loopback)
MAX_PACKET_SIZE = (256 - 1) << 10
#: bytes of SFTP write/read requests kept in flight
PIPELINE_BYTES = 8 << 20
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
#: persistent remote shells per connection (one per concurrent caller of ``run``)
SHELLS_PER_CONNECTION = 4


class _Lost(Exception):
    """The connection broke. ``sent``: the operation may already have reached the server."""

    def __init__(self, cause: BaseException | str, sent: bool = True):
        self.cause = cause
        self.sent = sent
        super().__init__(str(cause) or type(cause).__name__)


class _Fatal(TransportError):
    """A connection problem retrying cannot fix (host key, authentication)."""


# -- settings ----------------------------------------------------------------------------------

@dataclass
class SSHTarget:
    """Where and how to connect, after ``~/.ssh/config`` and the profile are combined."""

    host: str                                   # as the user wrote it (alias)
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: list[str] = field(default_factory=list)
    identities_only: bool = False
    known_hosts: list[str] = field(default_factory=list)   # files read
    known_hosts_write: str = ""                 # where an accepted key is recorded
    host_key_alias: str | None = None
    proxy_jump: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    accept_unknown_host: bool = False
    connect_timeout: float = 15.0
    keepalive: int = 15
    profile: str = ""

    @property
    def where(self) -> str:
        return f"{self.user}@{self.hostname}" + (f":{self.port}" if self.port != 22 else "")

    @property
    def known_name(self) -> str:
        """The name of this host in known_hosts files (``[host]:port`` unless port 22)."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"


def ssh_config_path() -> str:
    return os.path.expanduser("~/.ssh/config")


def _ssh_config() -> paramiko.SSHConfig:
    path = ssh_config_path()
    if os.path.exists(path):
        try:
            return paramiko.SSHConfig.from_path(path)
        except Exception as e:  # a broken config must not break every profile silently
            raise TransportError(f"cannot read {path}: {e}") from None
    return paramiko.SSHConfig()


def _split_hop(hop: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` -> (user, host, port)."""
    hop = hop.strip().removeprefix("ssh://")
    user = None
    if "@" in hop:
        user, _, hop = hop.rpartition("@")
    port = None
    if hop.startswith("["):
        host, _, rest = hop[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif hop.count(":") == 1:
        host, _, p = hop.partition(":")
        port = int(p)
    else:
        host = hop
    return user, host, port


def resolve(host: str, *, user: str | None = None, port: int | None = None,
            identity_file: str | None = None, known_hosts: str | None = None,
            proxy_jump: str | None = None, accept_unknown_host: bool = False,
            profile: str = "") -> SSHTarget:
    """Combine ``~/.ssh/config`` for ``host`` with explicit settings (which win)."""
    cfg = _ssh_config().lookup(host)
    t = SSHTarget(host=host, hostname=cfg.get("hostname", host), profile=profile)
    t.port = int(port or cfg.get("port") or 22)
    t.user = user or cfg.get("user") or getpass.getuser()
    ids = [os.path.expanduser(identity_file)] if identity_file else []
    ids += [os.path.expanduser(p) for p in cfg.get("identityfile", []) if p not in ids]
    t.identity_files = ids
    t.identities_only = str(cfg.get("identitiesonly", "no")).lower() == "yes"
    files = [os.path.expanduser(p) for p in str(cfg.get("userknownhostsfile", "")).split()]
    files = files or [os.path.expanduser("~/.ssh/known_hosts")]
    if known_hosts:
        files.append(os.path.expanduser(known_hosts))
    t.known_hosts_write = os.path.expanduser(known_hosts) if known_hosts else files[0]
    globals_ = str(cfg.get("globalknownhostsfile", "/etc/ssh/ssh_known_hosts")).split()
    t.known_hosts = files + [os.path.expanduser(p) for p in globals_ if p not in files]
    t.host_key_alias = cfg.get("hostkeyalias")
    jump = proxy_jump if proxy_jump is not None else cfg.get("proxyjump")
    if jump and jump.lower() != "none":
        t.proxy_jump = [h.strip() for h in jump.split(",") if h.strip()]
    cmd = cfg.get("proxycommand")
    if cmd and cmd.lower() != "none" and not t.proxy_jump:
        t.proxy_command = cmd
    t.accept_unknown_host = accept_unknown_host
    if cfg.get("connecttimeout"):
        t.connect_timeout = float(cfg["connecttimeout"])
    if cfg.get("serveraliveinterval"):
        t.keepalive = int(cfg["serveraliveinterval"])
    return t


# -- host keys ---------------------------------------------------------------------------------

def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: ``SHA256:base64``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _load_known(files: Sequence[str]) -> list[tuple[str, paramiko.HostKeys]]:
    out = []
    for path in files:
        keys = paramiko.HostKeys()
        if os.path.exists(path):
            try:
                keys.load(path)
            except (OSError, paramiko.SSHException) as e:
                log.warning("clusterjupyter: cannot read known_hosts file %s: %s", path, e)
                continue
        out.append((path, keys))
    return out


def _known_types(target: SSHTarget) -> list[str]:
    types: list[str] = []
    for _, keys in _load_known(target.known_hosts):
        for name in {target.known_name, target.hostname}:
            entry = keys.lookup(name)
            if entry:
                types += [k for k in entry.keys() if k not in types]
    return types


def verify_host_key(target: SSHTarget, key: paramiko.PKey) -> None:
    """Accept ``key`` for ``target`` or raise a :class:`TransportError` saying what to do."""
    name = target.known_name
    kind = key.get_name()
    found: list[tuple[str, paramiko.PKey]] = []
    for path, keys in _load_known(target.known_hosts):
        entry = keys.lookup(name)
        if entry is None and target.port == 22 and target.hostname != name:
            entry = keys.lookup(target.hostname)
        if not entry:
            continue
        for known_kind, known in entry.items():
            if known_kind == kind and known == key:
                return
            found.append((path, known))
    fp = fingerprint(key)
    if found:
        path, old = found[0]
        raise _Fatal(
            f"the host key of {name} has CHANGED: the server presents {kind} {fp}, but {path} "
            f"records {old.get_name()} {fingerprint(old)} for it. This can mean someone is "
            "intercepting the connection, or the host was reinstalled; clusterjupyter never "
            "accepts a changed key. Check with the host's administrator, then remove the old "
            f"entry with:  ssh-keygen -R '{name}' -f {shlex.quote(path)}")
    if target.accept_unknown_host:
        _record_host_key(target.known_hosts_write, name, key)
        log.warning("clusterjupyter: added the host key of %s (%s %s) to %s (profile %s has "
                    "accept_unknown_host = true)", name, kind, fp, target.known_hosts_write,
                    target.profile)
        return
    port = "" if target.port == 22 else f"-p {target.port} "
    prof = f"profile {target.profile!r}" if target.profile else "the profile"
    raise _Fatal(
        f"the host key of {name} is unknown: it presents {kind} {fp}. Make sure this is the "
        f"right fingerprint (ask the administrator), then trust it by either connecting once "
        f"with  ssh {port}{target.user}@{target.hostname}  and answering yes, or  ssh-keyscan "
        f"{port}{target.hostname} >> ~/.ssh/known_hosts  (after checking the fingerprint), or "
        f"setting  accept_unknown_host = true  in {prof}. "
        f"Files searched: {', '.join(target.known_hosts)}")


def _record_host_key(path: str, name: str, key: paramiko.PKey) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, mode=0o700, exist_ok=True)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)


# -- authentication ----------------------------------------------------------------------------

def can_prompt() -> bool:
    """Whether a person can answer a password prompt now."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        from IPython import get_ipython

        ip = get_ipython()
        kernel = getattr(ip, "kernel", None)
        if kernel is not None:
            return bool(getattr(kernel, "_allow_stdin", False))
    except Exception:
        pass
    return bool(sys.stdin is not None and sys.stdin.isatty())


def _authenticate(t: paramiko.Transport, target: SSHTarget) -> None:
    tried: set[str] = set()
    notes: list[str] = []

    def try_key(key: paramiko.PKey, label: str) -> bool:
        fp = fingerprint(key)
        if fp in tried:
            return False
        tried.add(fp)
        try:
            t.auth_publickey(target.user, key)
        except paramiko.AuthenticationException as e:
            notes.append(f"{label}: refused ({e})")
            return False
        except paramiko.SSHException as e:
            raise _Lost(e, sent=False) from None
        return t.is_authenticated()

    def key_files(paths: Iterable[str]) -> Iterator[tuple[paramiko.PKey, str]]:
        for path in paths:
            if not os.path.exists(path):
                continue
            try:
                key = paramiko.PKey.from_path(path)
            except (paramiko.PasswordRequiredException, TypeError):
                # (an encrypted OpenSSH-format key raises TypeError from cryptography)
                if can_prompt():
                    phrase = getpass.getpass(f"passphrase for {path}: ")
                    try:
                        key = paramiko.PKey.from_path(path, password=phrase.encode())
                    except (paramiko.SSHException, ValueError, TypeError) as e:
                        notes.append(f"{path}: passphrase not accepted ({e})")
                    else:
                        yield key, path
                else:
                    notes.append(f"{path}: encrypted (add it to ssh-agent)")
            except (OSError, paramiko.SSHException, ValueError) as e:
                notes.append(f"{path}: cannot be read ({e})")
            else:
                yield key, path

    for key, label in key_files(target.identity_files):
        if try_key(key, label):
            return
    if not target.identities_only:
        try:
            agent_keys = paramiko.Agent().get_keys()
        except Exception as e:  # no agent, or a broken socket
            agent_keys = ()
            notes.append(f"ssh-agent: {e}")
        for key in agent_keys:
            if try_key(key, f"ssh-agent key {fingerprint(key)}"):
                return
    if not target.identity_files:
        defaults = [os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS]
        for key, label in key_files(defaults):
            if try_key(key, label):
                return
    if can_prompt():
        try:
            t.auth_none(target.user)
            if t.is_authenticated():
                return
            allowed: list[str] = []
        except paramiko.BadAuthenticationType as e:
            allowed = list(e.allowed_types)
        except paramiko.AuthenticationException:
            allowed = []

        def answer(title: str, instructions: str, prompts: list) -> list[str]:
            if instructions:
                print(instructions, file=sys.stderr)
            return [getpass.getpass(p) if not echo else input(p) for p, echo in prompts]

        try:
            if "keyboard-interactive" in allowed:
                t.auth_interactive(target.user, answer)
            elif "password" in allowed:
                t.auth_password(target.user,
                                getpass.getpass(f"password for {target.where}: "))
            if t.is_authenticated():
                return
        except paramiko.AuthenticationException as e:
            notes.append(f"password: {e}")
    detail = "; ".join(notes) or "no key was offered"
    raise _Fatal(
        f"cannot log in to {target.where} (profile {target.profile!r}): {detail}. Load your key "
        "into ssh-agent, set identity_file in the profile or IdentityFile in ~/.ssh/config "
        "(passwords are asked only when the notebook can prompt, and never stored)")


# -- SFTP (version 3) --------------------------------------------------------------------------

_INIT, _VERSION, _OPEN, _CLOSE, _READ, _WRITE, _LSTAT, _FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
_SETSTAT, _FSETSTAT, _REMOVE, _MKDIR, _REALPATH, _STAT, _RENAME = 9, 10, 13, 14, 16, 17, 18
_STATUS, _HANDLE, _DATA, _NAME, _ATTRS, _EXTENDED, _EXTENDED_REPLY = 101, 102, 103, 104, 105, \
    200, 201
_FX_OK, _FX_EOF, _FX_NO_SUCH_FILE, _FX_PERMISSION_DENIED = 0, 1, 2, 3
_O_READ, _O_WRITE, _O_CREAT, _O_TRUNC, _O_EXCL = 0x1, 0x2, 0x8, 0x10, 0x20
_A_SIZE, _A_UIDGID, _A_PERMISSIONS, _A_ACMODTIME, _A_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000
_ERRNO = {_FX_NO_SUCH_FILE: errno.ENOENT, _FX_PERMISSION_DENIED: errno.EACCES}


def _s(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def _get_str(buf: bytes, off: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, off)
    return buf[off + 4:off + 4 + n], off + 4 + n


@dataclass
class _Attrs:
    size: int | None = None
    mode: int | None = None


def _parse_attrs(buf: bytes, off: int = 0) -> _Attrs:
    (flags,) = struct.unpack_from(">I", buf, off)
    off += 4
    a = _Attrs()
    if flags & _A_SIZE:
        (a.size,) = struct.unpack_from(">Q", buf, off)
        off += 8
    if flags & _A_UIDGID:
        off += 8
    if flags & _A_PERMISSIONS:
        (a.mode,) = struct.unpack_from(">I", buf, off)
    return a


class _Request:
    __slots__ = ("event", "type", "data")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.type = 0
        self.data = b""


class _Sftp:
    """A thread-safe, pipelining SFTP v3 client on one paramiko channel.

    Requests from any thread are sent under a send lock and answered by id: a reader thread
    hands each response to its waiting request. Anything that breaks the channel fails every
    waiting request with :class:`_Lost`; status errors become ``OSError`` (``FileNotFoundError``
    for a missing file) and never count as a lost connection.
    """

    def __init__(self, channel: paramiko.Channel, timeout: float = 120.0):
        self.chan = channel
        self.timeout = timeout
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, _Request] = {}
        self._next_id = 1
        self._dead: _Lost | None = None
        self._buf = bytearray()
        self._send_raw(struct.pack(">IBI", 5, _INIT, 3))
        typ, payload = self._read_packet()
        if typ != _VERSION:
            raise _Lost(f"the SFTP server answered {typ} to INIT", sent=False)
        self.extensions: dict[str, bytes] = {}
        off = 4
        while off < len(payload):
            name, off = _get_str(payload, off)
            data, off = _get_str(payload, off)
            self.extensions[name.decode(errors="replace")] = data
        self.max_write = 32 * 1024 - 1024
        self.max_read = 32 * 1024 - 1024
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name="clusterjupyter-sftp")
        self._reader.start()
        if "limits@openssh.com" in self.extensions:
            try:
                typ, data = self.call(_EXTENDED, _s("limits@openssh.com"))
                if typ == _EXTENDED_REPLY:
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
            self.fail(_Lost(e))
            raise _Lost(e) from None
        except BaseException as e:
            # interrupted part way through a packet (KeyboardInterrupt): the stream is out of
            # step, so this session is finished; the next operation opens another one
            self.fail(_Lost(f"interrupted while sending ({type(e).__name__})"))
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
            raise _Lost(e) from None
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
        except _Lost as e:
            self.fail(e)
        except Exception as e:  # a malformed packet: the session cannot continue
            self.fail(_Lost(e))

    def fail(self, why: _Lost) -> None:
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
    def send(self, typ: int, *parts: bytes | memoryview) -> _Request:
        req = _Request()
        with self._lock:
            if self._dead is not None:
                raise _Lost(self._dead.cause, sent=False)
            rid = self._next_id
            self._next_id = (rid + 1) & 0xFFFFFFFF
            self._pending[rid] = req
        size = 5 + sum(len(p) for p in parts)
        self._send_raw(b"".join((struct.pack(">IBI", size, typ, rid), *parts)))
        return req

    def wait(self, req: _Request) -> tuple[int, bytes]:
        if not req.event.wait(self.timeout):
            self.fail(_Lost(f"no SFTP answer within {self.timeout:.0f} s"))
        if not req.type:
            raise _Lost(self._dead.cause if self._dead else "SFTP session closed")
        return req.type, req.data

    def forget(self, req: _Request) -> None:
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
        if typ != _STATUS:
            raise OSError(errno.EPROTO, f"unexpected SFTP answer {typ} to {what}", path)
        (code,) = struct.unpack_from(">I", data, 0)
        if code == _FX_OK:
            return
        try:
            msg = _get_str(data, 4)[0].decode(errors="replace")
        except struct.error:
            msg = ""
        err = _ERRNO.get(code, errno.EIO)
        raise OSError(err, f"{what}: {msg or os.strerror(err)}", path)

    # -- operations ------------------------------------------------------------------------
    def stat(self, path: str) -> _Attrs:
        typ, data = self.call(_STAT, _s(path))
        if typ == _ATTRS:
            return _parse_attrs(data)
        self.check(typ, data, "stat", path)
        raise OSError(errno.EPROTO, "stat gave no attributes", path)

    def stat_many(self, paths: Sequence[str]) -> dict[str, _Attrs]:
        """Attributes of the paths that exist (all requests in flight at once)."""
        out = {}
        reqs = [(p, self.send(_STAT, _s(p))) for p in paths]
        for path, req in reqs:
            typ, data = self.wait(req)
            if typ == _ATTRS:
                out[path] = _parse_attrs(data)
        return out

    def mkdir(self, path: str, mode: int) -> None:
        typ, data = self.call(_MKDIR, _s(path), struct.pack(">II", _A_PERMISSIONS, mode))
        self.check(typ, data, "mkdir", path)

    def send_open(self, path: str, flags: int, mode: int | None = None) -> _Request:
        attrs = struct.pack(">II", _A_PERMISSIONS, mode) if mode is not None \
            else struct.pack(">I", 0)
        return self.send(_OPEN, _s(path), struct.pack(">I", flags), attrs)

    def handle(self, req: _Request, path: str) -> bytes:
        typ, data = self.wait(req)
        if typ == _HANDLE:
            return _get_str(data, 0)[0]
        self.check(typ, data, "open", path)
        raise OSError(errno.EPROTO, "open gave no handle", path)

    def open(self, path: str, flags: int, mode: int | None = None) -> bytes:
        return self.handle(self.send_open(path, flags, mode), path)

    def write_files(self, files: Sequence[tuple[str, str, bytes, int]]) -> None:
        """Write small files, each through its temporary name then a rename, in two round
        trips for all of them: every open in flight at once, then every write, close and
        rename. The server handles one channel's requests in order. ``files``: (temporary
        path, path, data, mode)."""
        opens = [(tmp, self.send_open(tmp, _O_WRITE | _O_CREAT | _O_TRUNC, mode))
                 for tmp, _, _, mode in files]
        handles: list[tuple[str, bytes]] = []
        failure: OSError | None = None
        for tmp, req in opens:
            try:
                handles.append((tmp, self.handle(req, tmp)))
            except OSError as e:
                failure = failure or e
        if failure is not None:
            # leave nothing behind (and be done with it before the caller looks)
            cleanup = [self.send(typ, _s(arg)) for tmp, h in handles
                       for typ, arg in ((_CLOSE, h), (_REMOVE, tmp))]
            for req in cleanup:
                self.wait(req)
            raise failure
        rename = "posix-rename@openssh.com" in self.extensions
        checks: list[tuple[_Request, str, str]] = []
        for (tmp, path, data, _), (_, h) in zip(files, handles, strict=True):
            hd = _s(h)
            view = memoryview(data)
            for start in range(0, len(view), self.max_write):
                piece = view[start:start + self.max_write]
                checks.append((self.send(_WRITE, hd, struct.pack(">QI", start, len(piece)),
                                         piece), "write", tmp))
            checks.append((self.send(_CLOSE, hd), "close", tmp))
            if rename:
                checks.append((self.send(_EXTENDED, _s("posix-rename@openssh.com"), _s(tmp),
                                         _s(path)), "rename", path))
        for req, what, path in checks:
            typ, data = self.wait(req)
            if failure is None:
                try:
                    self.check(typ, data, what, path)
                except OSError as e:
                    failure = e
        if failure is not None:
            raise failure
        if not rename:
            for tmp, path, _, _ in files:
                self.rename(tmp, path)

    def close(self, handle: bytes) -> None:
        typ, data = self.call(_CLOSE, _s(handle))
        self.check(typ, data, "close")

    def remove(self, path: str) -> None:
        typ, data = self.call(_REMOVE, _s(path))
        self.check(typ, data, "remove", path)

    def rename(self, old: str, new: str) -> None:
        """Atomic replace (posix-rename@openssh.com), else remove + rename."""
        if "posix-rename@openssh.com" in self.extensions:
            typ, data = self.call(_EXTENDED, _s("posix-rename@openssh.com"), _s(old), _s(new))
            self.check(typ, data, "rename", new)
            return
        typ, data = self.call(_RENAME, _s(old), _s(new))
        if typ == _STATUS and struct.unpack_from(">I", data, 0)[0] != _FX_OK:
            try:
                self.remove(new)
            except FileNotFoundError:
                pass
            typ, data = self.call(_RENAME, _s(old), _s(new))
        self.check(typ, data, "rename", new)

    def realpath(self, path: str) -> str:
        typ, data = self.call(_REALPATH, _s(path))
        if typ == _NAME:
            return _get_str(data, 4)[0].decode()
        self.check(typ, data, "realpath", path)
        raise OSError(errno.EPROTO, "realpath gave no name", path)

    def read_once(self, handle: bytes, offset: int, n: int) -> bytes:
        """One read of at most ``n`` bytes, the close of ``handle`` sent right behind it."""
        hd = _s(handle)
        req = self.send(_READ, hd, struct.pack(">QI", offset, n))
        self.forget(self.send(_CLOSE, hd))
        typ, data = self.wait(req)
        if typ == _STATUS and struct.unpack_from(">I", data, 0)[0] == _FX_EOF:
            return b""
        if typ != _DATA:
            self.check(typ, data, "read")
        return _get_str(data, 0)[0]

    def write_all(self, handle: bytes, chunks: Iterable[bytes | memoryview], offset: int,
                  progress: Callable[[int], None] | None = None) -> int:
        """Write ``chunks`` from ``offset`` with many requests in flight; returns the end offset."""
        hd = _s(handle)
        step = self.max_write
        depth = max(4, PIPELINE_BYTES // step)
        flight: collections.deque[tuple[_Request, int]] = collections.deque()

        def settle() -> None:
            req, n = flight.popleft()
            typ, data = self.wait(req)
            self.check(typ, data, "write")
            if progress is not None:
                progress(n)

        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), step):
                piece = view[start:start + step]
                while len(flight) >= depth:
                    settle()
                flight.append((self.send(_WRITE, hd, struct.pack(">QI", offset, len(piece)),
                                         piece), len(piece)))
                offset += len(piece)
        while flight:
            settle()
        return offset

    def read_all(self, handle: bytes, offset: int, limit: int | None) -> Iterator[bytes]:
        """Yield the data from ``offset`` (up to ``limit`` bytes), reading ahead."""
        step = self.max_read
        depth = 1
        flight: collections.deque[tuple[_Request, int, int]] = collections.deque()
        end = None if limit is None else offset + limit
        nxt = offset
        hd = _s(handle)
        try:
            while True:
                while len(flight) < depth and (end is None or nxt < end):
                    n = step if end is None else min(step, end - nxt)
                    flight.append((self.send(_READ, hd, struct.pack(">QI", nxt, n)), nxt, n))
                    nxt += n
                if not flight:
                    return
                req, at, asked = flight.popleft()
                typ, data = self.wait(req)
                if typ == _STATUS and struct.unpack_from(">I", data, 0)[0] == _FX_EOF:
                    return
                if typ != _DATA:
                    self.check(typ, data, "read")
                chunk = _get_str(data, 0)[0]
                if chunk:
                    yield chunk
                if len(chunk) < asked:
                    # a short read: drop what was read ahead, continue where this one ended
                    for r, _, _ in flight:
                        self.forget(r)
                    flight.clear()
                    nxt = at + len(chunk)
                    if not chunk:
                        return
                else:
                    depth = min(depth * 2, max(2, PIPELINE_BYTES // step))
        finally:
            for r, _, _ in flight:
                self.forget(r)


# -- commands through a persistent shell -------------------------------------------------------

class _Shell:
    """One long-lived POSIX ``sh`` on the host, running the commands written to its stdin.

    An exec channel per command costs a channel round trip plus the start of the user's login
    shell, which over SSH sources ``.bashrc`` even when not interactive (module systems, conda
    and pyenv make that 0.1–1 s on many hosts). A command written to a shell that is already
    running costs one fork. Each command runs in a subshell with stdin from ``/dev/null``, so
    nothing it does (``cd``, exports, reading stdin) reaches the next one. Its end is marked on
    stdout (with the exit status) and on stderr by a random token the command never sees.
    """

    def __init__(self, conn: "_Connection", deadline: float | None):
        self.chan = conn.open_channel()
        self._out = bytearray()
        self._err = bytearray()
        try:
            # what the login shell's startup files print is read and dropped below
            self.chan.exec_command("exec /bin/sh")
            token = uuid.uuid4().hex
            self._write(f"printf '%s\\n' {token}; printf '%s\\n' {token} >&2\n")
            mark = f"{token}\n".encode()
            self._until(self._out, mark, deadline)
            self._until(self._err, mark, deadline)
        except _ShellGone as e:
            self.close()
            raise _Lost(f"cannot start a shell on the host: {e}", sent=False) from None
        except BaseException:
            self.close()
            raise

    def _write(self, text: str) -> None:
        try:
            self.chan.sendall(text.encode())
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise _ShellGone(e) from None

    def _until(self, buf: bytearray, mark: bytes, deadline: float | None) -> bytes:
        """Read both streams until ``mark`` is in ``buf``; return what came before it (and drop
        it and the mark from ``buf``)."""
        chan = self.chan
        while True:
            i = buf.find(mark)
            if i >= 0:
                before = bytes(buf[:i])
                del buf[:i + len(mark)]
                return before
            moved = False
            if chan.recv_ready():
                self._out += chan.recv(1 << 20)
                moved = True
            if chan.recv_stderr_ready():
                self._err += chan.recv_stderr(1 << 20)
                moved = True
            if moved:
                continue
            if chan.closed or chan.eof_received or chan.exit_status_ready():
                # drain what is left before calling the shell gone
                if not (chan.recv_ready() or chan.recv_stderr_ready()):
                    raise _ShellGone("the shell on the host ended")
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise socket.timeout()
            select.select([chan], [], [], 1.0 if left is None else min(left, 1.0))

    def run(self, argv: Sequence[str], deadline: float | None) -> tuple[int, bytes, bytes]:
        token = uuid.uuid4().hex
        self._write(f"( {quote_argv(argv)}\n) </dev/null\n"
                    f"printf '\\n{token} %d\\n' $?; printf '\\n{token}\\n' >&2\n")
        try:
            out = self._until(self._out, f"\n{token} ".encode(), deadline)
            status = self._until(self._out, b"\n", deadline)
            err = self._until(self._err, f"\n{token}\n".encode(), deadline)
        except _ShellGone as e:
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


class _ShellGone(Exception):
    """The persistent shell ended. ``sent``: a command had been written to it."""

    def __init__(self, cause: BaseException | str, sent: bool = False):
        self.sent = sent
        super().__init__(str(cause) or type(cause).__name__)


# -- the connection ----------------------------------------------------------------------------

class _Connection:
    """One live SSH connection (through its jump hosts, if any) and its SFTP session.

    ``fallback`` lends its identity files and known_hosts files to jump hosts; ``via`` is the
    connection whose ``direct-tcpip`` channel carries this one.
    """

    def __init__(self, target: SSHTarget, fallback: SSHTarget | None = None,
                 via: "_Connection | None" = None):
        self.target = target
        self.jumps: list[_Connection] = []
        self.transport: paramiko.Transport | None = None
        self._sftp: _Sftp | None = None
        self._sftp_lock = threading.Lock()
        self._shells: list[_Shell] = []         # idle persistent shells
        self._shells_open = 0
        self._shells_cond = threading.Condition()
        #: the host would not run a persistent shell: every command gets its own channel
        self.no_shell = False
        try:
            self._open(fallback or target, via)
        except BaseException:
            self.close()
            raise

    def _jump_chain(self, fallback: SSHTarget) -> "_Connection":
        prev: _Connection | None = None
        for hop in self.target.proxy_jump:
            user, host, port = _split_hop(hop)
            hop_target = resolve(host, user=user, port=port, profile=self.target.profile,
                                 proxy_jump="none",
                                 accept_unknown_host=self.target.accept_unknown_host)
            # the profile's key and known_hosts also serve its jump hosts
            hop_target.identity_files += [p for p in fallback.identity_files
                                          if p not in hop_target.identity_files]
            hop_target.known_hosts += [p for p in fallback.known_hosts
                                       if p not in hop_target.known_hosts]
            prev = _Connection(hop_target, fallback, via=prev)
            self.jumps.append(prev)
        assert prev is not None
        return prev

    def _socket(self, fallback: SSHTarget, via: "_Connection | None") -> Any:
        t = self.target
        if via is None and t.proxy_jump:
            via = self._jump_chain(fallback)
        if via is not None:
            assert via.transport is not None
            try:
                return via.transport.open_channel("direct-tcpip", (t.hostname, t.port),
                                                  ("127.0.0.1", 0), timeout=t.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise _Lost(f"jump host {via.target.where} cannot reach "
                            f"{t.hostname}:{t.port}: {e}", sent=False) from None
        if t.proxy_command:
            return paramiko.ProxyCommand(t.proxy_command)
        sock = socket.create_connection((t.hostname, t.port), timeout=t.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _open(self, fallback: SSHTarget, via: "_Connection | None") -> None:
        target = self.target
        try:
            sock = self._socket(fallback, via)
        except (_Lost, _Fatal):
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise _Lost(f"cannot connect to {target.hostname}:{target.port}: {e}",
                        sent=False) from None
        t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                               default_max_packet_size=MAX_PACKET_SIZE)
        self.transport = t
        try:
            opts = t.get_security_options()
            available = tuple(opts.ciphers)
            opts.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in available) + tuple(
                c for c in available if c not in PREFERRED_CIPHERS)
            known = _known_types(target)
            if known:
                types = tuple(opts.key_types)
                first = tuple(k for k in known if k in types)
                opts.key_types = first + tuple(k for k in types if k not in first)
            t.start_client(timeout=target.connect_timeout)
            verify_host_key(target, t.get_remote_server_key())
            _authenticate(t, target)
            t.set_keepalive(target.keepalive)
        except (_Fatal, _Lost):
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise _Lost(f"SSH handshake with {target.hostname}:{target.port} failed: {e}",
                        sent=False) from None

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def sftp(self) -> _Sftp:
        s = self._sftp
        if s is not None and s.alive:
            return s
        with self._sftp_lock:
            if self._sftp is None or not self._sftp.alive:
                try:
                    chan = self.open_channel()
                    chan.invoke_subsystem("sftp")
                except _Lost:
                    raise
                except (OSError, EOFError, paramiko.SSHException) as e:
                    raise _Lost(e, sent=False) from None
                self._sftp = _Sftp(chan)
            return self._sftp

    def acquire_shell(self, deadline: float | None) -> _Shell:
        """An idle persistent shell, or a new one (at most SHELLS_PER_CONNECTION exist)."""
        with self._shells_cond:
            while True:
                while self._shells:
                    shell = self._shells.pop()
                    if shell.alive:
                        return shell
                    self._shells_open -= 1
                if self._shells_open < SHELLS_PER_CONNECTION:
                    self._shells_open += 1
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise socket.timeout()
                self._shells_cond.wait(left)
        try:
            return _Shell(self, deadline)
        except BaseException:
            with self._shells_cond:
                self._shells_open -= 1
                self._shells_cond.notify()
            raise

    def release_shell(self, shell: _Shell, reuse: bool) -> None:
        with self._shells_cond:
            if reuse and shell.alive and self.alive:
                self._shells.append(shell)
            else:
                self._shells_open -= 1
                shell.close()
            self._shells_cond.notify()

    def open_channel(self) -> paramiko.Channel:
        if self.transport is None:
            raise _Lost("not connected", sent=False)
        try:
            return self.transport.open_session(window_size=WINDOW_SIZE,
                                               max_packet_size=MAX_PACKET_SIZE,
                                               timeout=self.target.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise _Lost(e, sent=False) from None

    def close(self) -> None:
        with self._shells_cond:
            idle, self._shells = self._shells, []
        for shell in idle:
            shell.close()
        if self._sftp is not None:
            self._sftp.fail(_Lost("closed"))
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:
                pass
        for j in reversed(self.jumps):
            j.close()


# -- the transport -----------------------------------------------------------------------------

class SSHTransport(Transport):
    """Commands and files on a host reached over SSH (see the module docstring)."""

    #: reconnection attempts after a drop, and the first backoff (doubling) in seconds
    retries: int = 6
    backoff: float = 0.25

    def __init__(self, target: SSHTarget):
        self.target = target
        self.where = target.where
        self._conn: _Connection | None = None
        self._lock = threading.RLock()
        self._home: str | None = None
        #: how many connections were made (tests and benchmarks read it)
        self.connects = 0

    @classmethod
    def from_profile(cls, profile: "Profile") -> "SSHTransport":
        if not profile.host:
            raise TransportError(f"profile {profile.name!r} has no host")
        return cls(resolve(profile.host, user=profile.user, port=profile.port,
                           identity_file=profile.identity_file,
                           known_hosts=profile.known_hosts, proxy_jump=profile.proxy_jump,
                           accept_unknown_host=profile.accept_unknown_host,
                           profile=profile.name))

    # -- connection management -------------------------------------------------------------
    def connection(self) -> _Connection:
        """The live connection, made (with retries) if there is none."""
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        with self._lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if conn is not None:
                conn.close()
                self._conn = None
            last: BaseException | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    time.sleep(min(self.backoff * 2 ** (attempt - 1), 5.0))
                try:
                    conn = _Connection(self.target)
                except _Fatal:
                    raise
                except _Lost as e:
                    last = e
                    log.info("clusterjupyter: connecting to %s failed (%s), attempt %d",
                             self.where, e, attempt + 1)
                    continue
                self._conn = conn
                self.connects += 1
                return conn
            raise TransportError(f"cannot connect to {self.where} (profile "
                                 f"{self.target.profile!r}) after {self.retries + 1} attempts: "
                                 f"{last}")

    def _drop(self, conn: _Connection) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        conn.close()

    def _with_retry(self, what: str, fn: Callable[[_Connection], T], idempotent: bool = True) -> T:
        attempt = 0
        while True:
            conn = self.connection()
            try:
                return fn(conn)
            except _Lost as e:
                self._drop(conn)
                if e.sent and not idempotent:
                    raise TransportError(
                        f"the connection to {self.where} broke while running {what} ({e}); it "
                        "may or may not have run, so it was not run again") from None
                attempt += 1
                if attempt > self.retries:
                    raise TransportError(f"the connection to {self.where} keeps breaking "
                                         f"({what}: {e}); gave up after {attempt} tries") from None
                log.info("clusterjupyter: connection to %s lost during %s (%s); reconnecting",
                         self.where, what, e)
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 5.0))

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def break_connection(self) -> None:
        """Cut the live connection abruptly (tests and benchmarks simulate a network drop)."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            try:
                conn.transport.sock.close()
            except Exception:
                pass

    # -- commands --------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 60, check: bool = True, retry: bool = False) -> Completed:
        """Run ``argv`` on the host. ``retry``: the command is idempotent and may be run again
        after a reconnection (otherwise it is repeated only if it never reached the host)."""
        argv = [str(a) for a in argv]
        done = self._with_retry(argv[0], lambda c: self._exec(c, argv, input, timeout),
                                idempotent=retry)
        if check and done.returncode != 0:
            from ..errors import CommandError

            raise CommandError(done.argv, done.returncode, done.stdout, done.stderr, self.where)
        return done

    def _run(self, argv: Sequence[str], input: bytes | None, timeout: float | None) -> Completed:
        return self.run(argv, input=input, timeout=timeout, check=False)

    def _exec(self, conn: _Connection, argv: list[str], input: bytes | None,
              timeout: float | None) -> Completed:
        deadline = None if timeout is None else time.monotonic() + timeout
        if input is None and not conn.no_shell:
            try:
                return self._in_shell(conn, argv, timeout, deadline)
            except _Lost as e:
                if e.sent or not conn.alive:
                    raise
                # the host refused the shell (a restricted account): one channel per command
                log.info("clusterjupyter: no persistent shell on %s; one channel per command",
                         self.where)
                conn.no_shell = True
        return self._exec_channel(conn, argv, input, timeout, deadline)

    def _in_shell(self, conn: _Connection, argv: list[str], timeout: float | None,
                  deadline: float | None) -> Completed:
        try:
            shell = conn.acquire_shell(deadline)
        except socket.timeout:
            raise self._timed_out(argv, timeout) from None
        reuse = False
        try:
            code, out, err = shell.run(argv, deadline)
            reuse = True
        except socket.timeout:
            raise self._timed_out(argv, timeout) from None
        except _ShellGone as e:
            raise _Lost(e, sent=e.sent) from None
        finally:
            # a command cut short (timeout, interrupt) leaves the shell out of step: close it
            conn.release_shell(shell, reuse)
        return Completed(argv, code, out.decode(errors="replace"), err.decode(errors="replace"))

    def _timed_out(self, argv: list[str], timeout: float | None) -> TransportError:
        return TransportError(f"{argv[0]} did not finish within {timeout} s on "
                              f"{self.where}: {quote_argv(argv)[:300]}")

    def _exec_channel(self, conn: _Connection, argv: list[str], input: bytes | None,
                      timeout: float | None, deadline: float | None) -> Completed:
        chan = conn.open_channel()
        try:
            try:
                chan.exec_command(quote_argv(argv))
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise _Lost(e) from None
            try:
                if input:
                    chan.sendall(input)
                chan.shutdown_write()
                out = self._drain(chan, chan.recv, deadline)
                err = self._drain(chan, chan.recv_stderr, deadline)
                while not chan.exit_status_ready():
                    if not chan.status_event.wait(self._left(deadline)) and \
                            not chan.exit_status_ready():
                        raise socket.timeout()
                code = chan.recv_exit_status()
            except socket.timeout:
                raise self._timed_out(argv, timeout) from None
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise _Lost(e) from None
            if code == -1 and not conn.alive:
                raise _Lost("the connection closed before the command's exit status arrived")
        finally:
            chan.close()
        return Completed(argv, code, out.decode(errors="replace"), err.decode(errors="replace"))

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        return left

    def _drain(self, chan: paramiko.Channel, recv: Callable[[int], bytes],
               deadline: float | None) -> bytes:
        parts: list[bytes] = []
        while True:
            chan.settimeout(self._left(deadline))
            data = recv(1 << 16)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def spawn(self, argv: Sequence[str], log_path: str) -> str:
        """Start ``argv`` detached (``nohup setsid``) and return its pid. Idempotent per
        ``log_path``: a retry after a dropped connection reports the process already started."""
        # shell builtins only, apart from the job itself: every fork costs here
        script = (
            'log=$1; shift; pidf="$log.pid"\n'
            'if ( set -C; : > "$pidf" ) 2>/dev/null; then\n'
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
    def _sftp(self, what: str, fn: Callable[[_Sftp], T]) -> T:
        return self._with_retry(what, lambda c: fn(c.sftp()))

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
        def make(s: _Sftp) -> None:
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
        self._sftp(f"write {', '.join(files)}", lambda s: s.write_files(todo))

    def put_blob(self, blob: Blob, path: str, progress: Progress | None = None) -> None:
        """Stream ``blob`` into a temporary file, then rename it to ``path``. After a broken
        connection the upload resumes at the end of what the server already has."""
        tmp = self._tmp_name(path)
        sent = [0]

        def put(s: _Sftp) -> None:
            # resume after the last acknowledged write (every earlier write is acknowledged
            # too, since answers are awaited in order), if the server still has those bytes
            offset = 0
            if sent[0]:
                try:
                    offset = sent[0] if (s.stat(tmp).size or 0) >= sent[0] else 0
                except FileNotFoundError:
                    offset = 0
            flags = _O_WRITE | _O_CREAT | (0 if offset else _O_TRUNC)
            h = s.open(tmp, flags, 0o600)
            try:
                if progress is not None and offset != sent[0]:
                    progress.update(offset - sent[0])
                sent[0] = offset

                def moved(n: int) -> None:
                    sent[0] += n
                    if progress is not None:
                        progress.update(n)

                s.write_all(h, _chunks_from(blob, offset, s.max_write * 16), offset, moved)
            finally:
                try:
                    s.close(h)
                except OSError:
                    pass
            s.rename(tmp, path)

        try:
            self._sftp(f"upload {path}", put)
        except BaseException:
            conn = self._conn      # best effort, without reconnecting for it
            if conn is not None and conn.alive:
                try:
                    conn.sftp().remove(tmp)
                except Exception:
                    pass
            raise

    def rename(self, old: str, new: str) -> None:
        def move(s: _Sftp) -> None:
            try:
                s.rename(old, new)
            except FileNotFoundError:
                s.stat(new)     # a repeat after a dropped connection: the first one went through

        self._sftp(f"rename {old}", move)

    def open(self, path: str) -> IO[bytes]:
        f = _RemoteFile(self, path)
        f.start()
        return io.BufferedReader(f, buffer_size=1 << 20)

    @staticmethod
    def _read_and_close(s: _Sftp, h: bytes, offset: int, limit: int | None) -> bytes:
        try:
            return b"".join(s.read_all(h, offset, limit))
        finally:
            try:
                s.close(h)
            except OSError:
                pass

    def read(self, path: str) -> bytes:
        return self._sftp(f"read {path}",
                          lambda s: self._read_and_close(s, s.open(path, _O_READ), 0, None))

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        def get(s: _Sftp) -> bytes:
            try:
                h = s.open(path, _O_READ)
            except FileNotFoundError:
                return b""
            if limit <= s.max_read:
                # two round trips: open, then read and close sent together
                return s.read_once(h, offset, limit)
            return self._read_and_close(s, h, offset, limit)

        return self._sftp(f"read {path}", get)

    def remove_tree(self, path: str) -> None:
        self.run(["rm", "-rf", "--", path], retry=True)


def _chunks_from(blob: Blob, offset: int, size: int) -> Iterator[memoryview]:
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


class _RemoteFile(io.RawIOBase):
    """A remote file read with requests in flight ahead of the reader; survives reconnects."""

    def __init__(self, transport: SSHTransport, path: str):
        super().__init__()
        self._t = transport
        self._path = path
        self._pos = 0
        self._buf = b""
        self._bufpos = 0
        self._eof = False
        self._sftp: _Sftp | None = None
        self._handle: bytes | None = None
        self._iter: Iterator[bytes] | None = None
        self._reopened = 0

    def start(self) -> None:
        def op(s: _Sftp) -> None:
            self._sftp = s
            self._handle = s.open(self._path, _O_READ)
            self._iter = s.read_all(self._handle, self._pos, None)

        self._t._sftp(f"open {self._path}", op)

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
            except _Lost as e:
                self._release()
                self._reopened += 1
                if self._reopened > self._t.retries:
                    raise TransportError(f"the connection to {self._t.where} keeps breaking "
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
