"""Logging in: keys (the profile's, ~/.ssh/config's, ssh-agent's, the default files), then a
password or keyboard-interactive answer asked through a prompt function the caller passes in.

A prompt function takes the prompt's text and whether the answer may be echoed, and returns the
answer, or ``None`` when no person can answer now (a background thread, a server). Answers are
never kept.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
from typing import Callable, Iterable, Iterator

import paramiko

from .config import SSHTarget
from .errors import Fatal, Lost
from .hostkeys import fingerprint

#: (text, echo) -> the answer, or None when nobody can answer now
Prompt = Callable[[str, bool], "str | None"]
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def terminal_prompt(text: str, echo: bool = False) -> str | None:
    """Ask at this process's terminal (main thread only); ``None`` without one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if sys.stdin is None or not sys.stdin.isatty():
        return None
    return input(text) if echo else getpass.getpass(text)


def no_prompt(text: str, echo: bool = False) -> None:
    """Nobody can answer (keys only)."""
    return None


class _Login:
    """One login attempt's state: keys tried, and notes on what failed (for the error)."""

    def __init__(self, t: paramiko.Transport, target: SSHTarget, prompt: Prompt):
        self.t = t
        self.target = target
        self.prompt = prompt
        self.tried: set[str] = set()
        self.notes: list[str] = []
        self.missing: list[str] = []

    def try_key(self, key: paramiko.PKey, label: str) -> bool:
        fp = fingerprint(key)
        if fp in self.tried:
            return False
        self.tried.add(fp)
        try:
            self.t.auth_publickey(self.target.user, key)
        except paramiko.AuthenticationException as e:
            self.notes.append(f"{label}: refused ({e})")
            return False
        except paramiko.SSHException as e:
            raise Lost(e, sent=False) from None
        return self.t.is_authenticated()

    def key_files(self, paths: Iterable[str], named: bool) -> Iterator[tuple[paramiko.PKey, str]]:
        """The keys in ``paths``; ``named``: the user named these files (a missing one is
        reported, where a missing default key file is not)."""
        for path in paths:
            if not os.path.exists(path):
                if named:
                    self.missing.append(path)
                continue
            try:
                key = paramiko.PKey.from_path(path)
            except (paramiko.PasswordRequiredException, TypeError):
                # (an encrypted OpenSSH-format key raises TypeError from cryptography)
                phrase = self.prompt(f"passphrase for {path}: ", False)
                if phrase is None:
                    self.notes.append(f"{path}: encrypted (add it to ssh-agent)")
                    continue
                try:
                    key = paramiko.PKey.from_path(path, password=phrase.encode())
                except (paramiko.SSHException, ValueError, TypeError) as e:
                    self.notes.append(f"{path}: passphrase not accepted ({e})")
                    continue
            except (OSError, paramiko.SSHException, ValueError) as e:
                self.notes.append(f"{path}: cannot be read ({e})")
                continue
            yield key, path

    def with_keys(self) -> bool:
        target = self.target
        for key, label in self.key_files(target.identity_files, named=True):
            if self.try_key(key, label):
                return True
        if not target.identities_only:
            try:
                agent_keys = paramiko.Agent().get_keys()
            except Exception as e:  # no agent, or a broken socket
                agent_keys = ()
                self.notes.append(f"ssh-agent: {e}")
            for key in agent_keys:
                if self.try_key(key, f"ssh-agent key {fingerprint(key)}"):
                    return True
        if not target.identity_files:
            defaults = [os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS]
            for key, label in self.key_files(defaults, named=False):
                if self.try_key(key, label):
                    return True
        return False

    def with_answers(self) -> bool:
        """A password or keyboard-interactive login, if the server offers one and a person
        answers."""
        t, user = self.t, self.target.user
        try:
            t.auth_none(user)
            if t.is_authenticated():
                return True
            allowed: list[str] = []
        except paramiko.BadAuthenticationType as e:
            allowed = list(e.allowed_types)
        except paramiko.AuthenticationException:
            allowed = []

        def answer(title: str, instructions: str, prompts: list) -> list[str]:
            if instructions:
                print(instructions, file=sys.stderr)
            answers = [self.prompt(p, bool(echo)) for p, echo in prompts]
            if any(a is None for a in answers):
                raise paramiko.AuthenticationException("nobody to answer the prompt")
            return [str(a) for a in answers]

        try:
            if "keyboard-interactive" in allowed:
                t.auth_interactive(user, answer)
            elif "password" in allowed:
                password = self.prompt(f"password for {self.target.where}: ", False)
                if password is None:
                    return False
                t.auth_password(user, password)
            return t.is_authenticated()
        except paramiko.AuthenticationException as e:
            self.notes.append(f"password: {e}")
            return False

    def failure(self) -> Fatal:
        target = self.target
        where = f"cannot log in to {target.where} (profile {target.profile!r})"
        if self.missing:
            files = ", ".join(self.missing)
            verb = "does" if len(self.missing) == 1 else "do"
            others = f" (also: {'; '.join(self.notes)})" if self.notes else ""
            return Fatal(f"{where}: {files} {verb} not exist. Fix identity_file in the profile "
                         f"or IdentityFile in ~/.ssh/config{others}")
        detail = "; ".join(self.notes) or "no key was offered"
        return Fatal(
            f"{where}: {detail}. Load your key into ssh-agent, set identity_file in the profile "
            "or IdentityFile in ~/.ssh/config (passwords are asked only when the notebook can "
            "prompt, and never stored)")


def authenticate(t: paramiko.Transport, target: SSHTarget, prompt: Prompt = no_prompt) -> None:
    """Log in on ``t`` (host key already verified) or raise :class:`Fatal` saying why not."""
    login = _Login(t, target, prompt)
    if login.with_keys() or login.with_answers():
        return
    raise login.failure()
