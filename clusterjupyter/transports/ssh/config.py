"""Where and how to connect: ``~/.ssh/config`` combined with the profile's settings."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field

import paramiko

from ...errors import TransportError


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


def read_ssh_config() -> paramiko.SSHConfig:
    path = ssh_config_path()
    if os.path.exists(path):
        try:
            return paramiko.SSHConfig.from_path(path)
        except Exception as e:  # a broken config must not break every profile silently
            raise TransportError(f"cannot read {path}: {e}") from None
    return paramiko.SSHConfig()


def split_hop(hop: str) -> tuple[str | None, str, int | None]:
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
    cfg = read_ssh_config().lookup(host)
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

