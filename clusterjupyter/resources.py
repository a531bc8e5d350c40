"""Portable resource requests (``--time 10 --mem 4G --cpus 2 …``), parsed and validated once.

Each scheduler maps a :class:`Resources` onto its own directives; the values here are already
normalised (seconds, megabytes, integers) so no scheduler parses user text itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ProfileError

#: the power of 1024 each size suffix stands for
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,:+=@/-]*$")
#: the longest time limit taken: a year. Schedulers keep limits in 32 bits (SLURM: minutes,
#: wrapping an absurd request into a short one), and no cluster grants more.
MAX_TIME = 366 * 86400


def parse_time(value: Any) -> int:
    """Seconds from ``90`` (minutes, as SLURM), ``"1:30:00"``, ``"2-00:00:00"``, ``"45m"``,
    ``"2h"``, ``"30s"``, ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > MAX_TIME:
            raise ValueError(f"invalid time {value!r}: at most {MAX_TIME // 86400} days")
        seconds = int(value * 60)
    else:
        text = str(value).strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
        if m:
            seconds = int(float(m.group(1)) * _TIME_UNITS[m.group(2)])
        else:
            m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
            if not m:
                raise ValueError(f"invalid time {value!r}: use minutes (90), H:MM:SS, "
                                 "D-HH:MM:SS or a unit (45m, 2h, 1d, 30s)")
            days, a, b, c = m.groups()
            parts = [int(x) for x in (a, b, c) if x is not None]
            if len(parts) == 1:
                seconds = parts[0] * 60
            elif len(parts) == 2:
                seconds = parts[0] * 3600 + parts[1] * 60 if days else parts[0] * 60 + parts[1]
            else:
                seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
            seconds += int(days or 0) * 86400
    if seconds <= 0:
        raise ValueError(f"invalid time {value!r}: must be positive")
    if seconds > MAX_TIME:
        raise ValueError(f"invalid time {value!r}: at most {MAX_TIME // 86400} days "
                         f"({MAX_TIME // 60} minutes); no scheduler takes a longer limit")
    return seconds


def size_in(value: Any, unit: int, what: str, hint: str) -> float:
    """A size in units of ``unit`` bytes (pure): a bare number is already in them; ``"512K"``,
    ``"1.5G"``, ``"2GiB"``, ``"4GB"`` are powers of 1024. The one parser of sizes in the
    user's words (memory requests in megabytes, staging limits in bytes)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", str(value).strip().lower())
    if not m:
        raise ValueError(f"invalid {what} {value!r}: {hint}")
    if not m.group(2):
        return float(m.group(1))
    return float(m.group(1)) * 1024 ** _SIZE_POWERS[m.group(2)] / unit


def parse_mem(value: Any) -> int:
    """Megabytes from ``4096`` (MB), ``"4G"``, ``"500M"``, ``"4GB"``, ``"1.5g"``."""
    mb = size_in(value, 1 << 20, "memory", "use a size like 500M, 4G or 4096 (MB)")
    if mb < 1:
        raise ValueError(f"invalid memory {value!r}: must be at least 1M")
    return int(mb)



def _positive_int(value: Any, what: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: must be a whole number") from None
    if n < 1:
        raise ValueError(f"invalid {what} {value!r}: must be at least 1")
    return n


def _name(value: Any, what: str) -> str:
    text = str(value).strip()
    if not text or not _NAME_RE.match(text):
        raise ValueError(f"invalid {what} {value!r}: letters, digits and _.,:+=@/- only")
    return text


@dataclass
class Resources:
    """What a job asks for. ``None`` means the scheduler's (or profile's) default."""

    time: int | None = None          # seconds
    cpus: int | None = None
    mem: int | None = None           # megabytes
    gpus: str | None = None          # "2" or "a100:2"
    nodes: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    directives: list[str] = field(default_factory=list)   # free-form extra scheduler directives

    _PARSERS = {
        "time": parse_time,
        "cpus": lambda v: _positive_int(v, "cpus"),
        "mem": parse_mem,
        "nodes": lambda v: _positive_int(v, "nodes"),
        "gpus": lambda v: _name(v, "gpus"),
        "partition": lambda v: _name(v, "partition"),
        "account": lambda v: _name(v, "account"),
        "qos": lambda v: _name(v, "qos"),
        "constraint": lambda v: str(v).strip(),
    }

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, values: dict[str, Any], where: str = "") -> "Resources":
        """Validate user values; unknown or invalid ones raise ProfileError naming the field."""
        out = cls()
        for key, value in values.items():
            if value is None:
                continue
            if key == "directives":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ProfileError("must be a list of strings", where or None, "directives")
                out.directives = [v.strip() for v in value]
                continue
            parser = cls._PARSERS.get(key)
            if parser is None:
                valid = ", ".join(cls.names())
                raise ProfileError(f"unknown resource {key!r}; valid resources: {valid}",
                                   where or None, key)
            try:
                setattr(out, key, parser(value))
            except ValueError as e:
                raise ProfileError(str(e), where or None, key) from None
        return out

    def merged(self, override: "Resources") -> "Resources":
        """These defaults with every value set in ``override`` taking precedence."""
        d = asdict(self)
        for key, value in asdict(override).items():
            if key == "directives":
                d[key] = d[key] + value
            elif value is not None:
                d[key] = value
        return Resources(**d)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}
