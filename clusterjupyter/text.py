"""Small text helpers shared by the package: durations and signal names, one place each.

Pure functions of the standard library only (the runner imports this module on the cluster).
"""

from __future__ import annotations

import re
import signal

_CLOCK = re.compile(r"\s*(?:(?:(\d+):)?(\d+):)?(\d+)(?:\.\d+)?s?\s*")


def hms(seconds: float | None) -> str:
    """``HH:MM:SS`` with as many hours as needed (PBS walltime, Grid Engine h_rt, elapsed)."""
    h, rest = divmod(int(seconds or 0), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def dhms(seconds: float) -> str:
    """``D-HH:MM:SS`` from a day on, ``HH:MM:SS`` below (SLURM's ``--time``)."""
    days, rest = divmod(int(seconds), 86400)
    return f"{days}-{hms(rest)}" if days else hms(rest)


def short_duration(seconds: float | None, precise: bool = False) -> str:
    """``42s``, ``3m05s``, ``2h07m`` for people (``0.4s`` under ten seconds if ``precise``);
    ``-`` for None."""
    if seconds is None:
        return "-"
    if precise and seconds < 10:
        return f"{max(seconds, 0):.1f}s"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def limit_duration(seconds: float) -> str:
    """A limit as people write it: ``2 s``, ``2 min``, ``1 h 30 min``, ``1 d 2 h`` (exact: the
    units that are not zero; ``--time 2`` is ``2 min``, ``--time 2s`` is ``2 s``)."""
    s = max(int(seconds), 0)
    parts = []
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if s >= size:
            parts.append(f"{s // size} {unit}")
            s %= size
    return " ".join(parts) or "0 s"


def megabytes(mb: float) -> str:
    """A memory size as people write it: ``4 GB`` for 4096, ``500 MB``."""
    mb = int(mb)
    return f"{mb // 1024} GB" if mb >= 1024 and mb % 1024 == 0 else f"{mb} MB"


def clock_seconds(text: str | None) -> int | None:
    """Seconds from ``[[H:]M:]S`` (``00:10:04``, ``6s``, ``12``); None if absent or unreadable."""
    m = _CLOCK.fullmatch(text or "")
    if not text or not m:
        return None
    h, mi, s = (int(x) if x else 0 for x in m.groups())
    return h * 3600 + mi * 60 + s


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number that is no signal here."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
