"""Host keys: verified against known_hosts files before any credential is sent."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shlex
from typing import Sequence

import paramiko

from .config import SSHTarget
from .errors import Fatal

log = logging.getLogger(__name__)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: ``SHA256:base64``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_known(files: Sequence[str]) -> list[tuple[str, paramiko.HostKeys]]:
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


def known_types(target: SSHTarget) -> list[str]:
    types: list[str] = []
    for _, keys in load_known(target.known_hosts):
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
    for path, keys in load_known(target.known_hosts):
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
        raise Fatal(
            f"the host key of {name} has CHANGED: the server presents {kind} {fp}, but {path} "
            f"records {old.get_name()} {fingerprint(old)} for it. This can mean someone is "
            "intercepting the connection, or the host was reinstalled; clusterjupyter never "
            "accepts a changed key. Check with the host's administrator, then remove the old "
            f"entry with:  ssh-keygen -R '{name}' -f {shlex.quote(path)}")
    if target.accept_unknown_host:
        record_host_key(target.known_hosts_write, name, key)
        log.warning("clusterjupyter: added the host key of %s (%s %s) to %s (profile %s has "
                    "accept_unknown_host = true)", name, kind, fp, target.known_hosts_write,
                    target.profile)
        return
    port = "" if target.port == 22 else f"-p {target.port} "
    prof = f"profile {target.profile!r}" if target.profile else "the profile"
    raise Fatal(
        f"the host key of {name} is unknown: it presents {kind} {fp}. Make sure this is the "
        f"right fingerprint (ask the administrator), then trust it by either connecting once "
        f"with  ssh {port}{target.user}@{target.hostname}  and answering yes, or  ssh-keyscan "
        f"{port}{target.hostname} >> ~/.ssh/known_hosts  (after checking the fingerprint), or "
        f"setting  accept_unknown_host = true  in {prof}. "
        f"Files searched: {', '.join(target.known_hosts)}")


def record_host_key(path: str, name: str, key: paramiko.PKey) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, mode=0o700, exist_ok=True)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)

