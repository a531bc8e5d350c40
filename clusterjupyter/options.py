"""Option values shared by the magics and the sweep cell (one module, so neither imports the
other): pure readings of what the user typed, each refusal a UsageError that shows the fix."""

from __future__ import annotations

import difflib
from typing import Any

from IPython.core.error import UsageError


def count_option(option: str, text: str) -> int:
    """A positive whole number given to ``option``, or a UsageError saying so."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{option} needs a whole number of at least 1, not {text!r}")
    return value


def unquoted(args: Any) -> Any:
    """IPython splits magic lines keeping quotes (``--name 'my job'`` gives ``"'my job'"``):
    take off one pair of matching quotes around each option value of ``args``, in place."""
    def strip(v: Any) -> Any:
        if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            return v[1:-1]
        return [strip(x) for x in v] if isinstance(v, list) else v
    for key, value in vars(args).items():
        setattr(args, key, strip(value))
    return args


def unknown_options(line: str, valid: list[str], message: str) -> str:
    """The error for an option line the parser refused (pure): each unknown ``--option`` with
    the closest valid one, else the parser's ``message``; then every valid option."""
    known = {v.lstrip("-").replace("-", "_") for v in valid}
    hints = []
    for word in line.split():
        if not word.startswith("-"):
            continue
        opt = word.split("=")[0]
        if opt.lstrip("-").replace("-", "_") not in known:
            close = difflib.get_close_matches(opt, valid, n=1)
            hints.append(f"unknown option {opt}"
                         + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(hints or [message]) + f"\nvalid options: {', '.join(valid)}"
