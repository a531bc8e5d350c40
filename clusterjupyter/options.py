"""Option values shared by the magics and the sweep cell (one module, so neither imports the
other)."""

from __future__ import annotations

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
