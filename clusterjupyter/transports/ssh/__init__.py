"""A remote host as a transport: one paramiko connection per profile, commands and SFTP over it.

One job per module: :mod:`.config` (``~/.ssh/config``), :mod:`.hostkeys`, :mod:`.auth` (keys,
then answers from a prompt function the caller passes in), :mod:`.sftp` and :mod:`.transfers`
(the SFTP client), :mod:`.remotefile`, :mod:`.shell` (persistent remote shells),
:mod:`.connection` (+ jump hosts), :mod:`.commands`, :mod:`.retry` (the retry policy) and
:mod:`.transport` (:class:`SSHTransport`).

What it promises (see :class:`~.base.Transport` for the contract):

* **One connection, shared.** One paramiko ``Transport`` and one SFTP session per
  :class:`SSHTransport`, used concurrently by the kernel thread and the monitor thread. SFTP
  requests from several threads are multiplexed by request id (:class:`~.sftp.Sftp`), so a large
  upload never blocks the monitor's small requests for long.
* **Commands cost a fork, not a login.** Commands are written to long-lived remote ``sh``
  processes (:class:`~.shell.Shell`, one per concurrent caller, at most ``SHELLS_PER_CONNECTION``):
  about 1 ms each, where an exec channel per command pays for the user's login shell and its
  startup files every time (0.1–0.15 s on the test host, often more on clusters with module
  systems). A host that refuses them gets one exec channel per command.
* **Configuration like OpenSSH.** ``~/.ssh/config`` (HostName, User, Port, IdentityFile,
  IdentitiesOnly, ProxyJump, ProxyCommand, UserKnownHostsFile, HostKeyAlias, ConnectTimeout,
  ServerAliveInterval); the profile's ``user``/``port``/``identity_file``/``proxy_jump`` win.
  Keys: the profile's and config's identity files, then ssh-agent, then the default key files.
  A password or keyboard-interactive answer is asked through the prompt function given to the
  transport (the kernel passes one that asks only when a person can answer: its main thread with
  stdin allowed), and never kept.
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

from .auth import Prompt, no_prompt, terminal_prompt
from .config import SSHTarget, resolve
from .connection import SHELLS_PER_CONNECTION
from .hostkeys import fingerprint, verify_host_key
from .sftp import NotRegularFile
from .transport import SSHTransport

__all__ = ["SHELLS_PER_CONNECTION", "NotRegularFile", "Prompt", "SSHTarget", "SSHTransport",
           "fingerprint", "no_prompt", "resolve", "terminal_prompt", "verify_host_key"]
