"""Asking the person at the notebook for a password or passphrase (the kernel side of SSH logins).

The SSH transport never probes IPython itself: the kernel-side code that builds a transport
passes :func:`kernel_prompt`, which asks only when someone can answer.
"""

from __future__ import annotations

import getpass
import sys
import threading


def can_prompt() -> bool:
    """Whether a person can answer a prompt now: the kernel's main thread with stdin allowed
    (a notebook), or a terminal."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is not None:
            return bool(getattr(kernel, "_allow_stdin", False))
    except Exception:
        pass
    return bool(sys.stdin is not None and sys.stdin.isatty())


def kernel_prompt(text: str, echo: bool = False) -> str | None:
    """The answer typed at the notebook's (or terminal's) prompt, or ``None`` if nobody can
    answer now; the answer is never kept."""
    if not can_prompt():
        return None
    return input(text) if echo else getpass.getpass(text)
