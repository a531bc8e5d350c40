"""One live SSH connection (through its jump hosts, if any): the handshake, its SFTP session and
its pool of persistent shells."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import paramiko

from .auth import Prompt, authenticate, no_prompt
from .config import SSHTarget, resolve, split_hop
from .errors import Fatal, Lost
from .hostkeys import known_types, verify_host_key
from .sftp import Sftp
from .shell import Shell

#: cipher order: AES-GCM needs no separate MAC and is the cheapest with AES-NI
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr", "aes192-ctr")
#: our receive window per channel (downloads stream without waiting for window adjustments)
WINDOW_SIZE = 64 << 20
#: largest packet we accept: big packets cut per-packet costs of downloads (2.3x on loopback)
MAX_PACKET_SIZE = (256 - 1) << 10
#: persistent remote shells per connection (one per concurrent caller of ``run``)
SHELLS_PER_CONNECTION = 4


class Connection:
    """One live SSH connection (through its jump hosts, if any) and its SFTP session.

    ``fallback`` lends its identity files and known_hosts files to jump hosts; ``via`` is the
    connection whose ``direct-tcpip`` channel carries this one.
    """

    def __init__(self, target: SSHTarget, fallback: SSHTarget | None = None,
                 via: "Connection | None" = None, prompt: Prompt = no_prompt):
        self.target = target
        self.prompt = prompt
        self.jumps: list[Connection] = []
        self.transport: paramiko.Transport | None = None
        self._sftp: Sftp | None = None
        self._sftp_lock = threading.Lock()
        self._shells: list[Shell] = []         # idle persistent shells
        self._shells_open = 0
        self._shells_cond = threading.Condition()
        #: the host would not run a persistent shell: every command gets its own channel
        self.no_shell = False
        try:
            self._open(fallback or target, via)
        except BaseException:
            self.close()
            raise

    def _jump_chain(self, fallback: SSHTarget) -> "Connection":
        prev: Connection | None = None
        for hop in self.target.proxy_jump:
            user, host, port = split_hop(hop)
            hop_target = resolve(host, user=user, port=port, profile=self.target.profile,
                                 proxy_jump="none",
                                 accept_unknown_host=self.target.accept_unknown_host)
            # the profile's key and known_hosts also serve its jump hosts
            hop_target.identity_files += [p for p in fallback.identity_files
                                          if p not in hop_target.identity_files]
            hop_target.known_hosts += [p for p in fallback.known_hosts
                                       if p not in hop_target.known_hosts]
            prev = Connection(hop_target, fallback, via=prev, prompt=self.prompt)
            self.jumps.append(prev)
        assert prev is not None
        return prev

    def _socket(self, fallback: SSHTarget, via: "Connection | None") -> Any:
        t = self.target
        if via is None and t.proxy_jump:
            via = self._jump_chain(fallback)
        if via is not None:
            assert via.transport is not None
            try:
                return via.transport.open_channel("direct-tcpip", (t.hostname, t.port),
                                                  ("127.0.0.1", 0), timeout=t.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise Lost(f"jump host {via.target.where} cannot reach "
                            f"{t.hostname}:{t.port}: {e}", sent=False) from None
        if t.proxy_command:
            return paramiko.ProxyCommand(t.proxy_command)
        sock = socket.create_connection((t.hostname, t.port), timeout=t.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _open(self, fallback: SSHTarget, via: "Connection | None") -> None:
        target = self.target
        try:
            sock = self._socket(fallback, via)
        except (Lost, Fatal):
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise Lost(f"cannot connect to {target.hostname}:{target.port}: {e}",
                        sent=False) from None
        t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                               default_max_packet_size=MAX_PACKET_SIZE)
        self.transport = t
        try:
            opts = t.get_security_options()
            available = tuple(opts.ciphers)
            opts.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in available) + tuple(
                c for c in available if c not in PREFERRED_CIPHERS)
            known = known_types(target)
            if known:
                types = tuple(opts.key_types)
                first = tuple(k for k in known if k in types)
                opts.key_types = first + tuple(k for k in types if k not in first)
            t.start_client(timeout=target.connect_timeout)
            verify_host_key(target, t.get_remote_server_key())
            authenticate(t, target, self.prompt)
            t.set_keepalive(target.keepalive)
        except (Fatal, Lost):
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise Lost(f"SSH handshake with {target.hostname}:{target.port} failed: {e}",
                        sent=False) from None

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def sftp(self) -> Sftp:
        s = self._sftp
        if s is not None and s.alive:
            return s
        with self._sftp_lock:
            if self._sftp is None or not self._sftp.alive:
                try:
                    chan = self.open_channel()
                    chan.invoke_subsystem("sftp")
                except Lost:
                    raise
                except (OSError, EOFError, paramiko.SSHException) as e:
                    raise Lost(e, sent=False) from None
                self._sftp = Sftp(chan)
            return self._sftp

    def acquire_shell(self, deadline: float | None) -> Shell:
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
            return Shell(self.open_channel(), deadline)
        except BaseException:
            with self._shells_cond:
                self._shells_open -= 1
                self._shells_cond.notify()
            raise

    def release_shell(self, shell: Shell, reuse: bool) -> None:
        with self._shells_cond:
            if reuse and shell.alive and self.alive:
                self._shells.append(shell)
            else:
                self._shells_open -= 1
                shell.close()
            self._shells_cond.notify()

    def open_channel(self) -> paramiko.Channel:
        if self.transport is None:
            raise Lost("not connected", sent=False)
        try:
            return self.transport.open_session(window_size=WINDOW_SIZE,
                                               max_packet_size=MAX_PACKET_SIZE,
                                               timeout=self.target.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise Lost(e, sent=False) from None

    def close(self) -> None:
        with self._shells_cond:
            idle, self._shells = self._shells, []
        for shell in idle:
            shell.close()
        if self._sftp is not None:
            self._sftp.fail(Lost("closed"))
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:
                pass
        for j in reversed(self.jumps):
            j.close()

