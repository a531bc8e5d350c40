"""Sweeps, the pure part: ``--sweep "NAME in EXPR"`` into elements, element ids, progress and
the per-element results gathered into one object per name.

Nothing here talks to a cluster; :mod:`.sweeps` submits and follows a sweep.
"""

from __future__ import annotations

import itertools
import keyword
import pickle
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .states import JobState

#: the most elements a sweep may have unless ``--max-elements`` raises it
MAX_ELEMENTS = 10_000
_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s+in\s+(.+?)\s*$", re.DOTALL)


class SweepError(ValueError):
    """A sweep that cannot be run as written (the message says how to fix it)."""


@dataclass(frozen=True)
class Axis:
    """One ``NAME in EXPR``."""

    name: str
    expr: str


def parse_axes(specs: Sequence[str]) -> list[Axis]:
    """``["alpha in [0.1, 1]", …]`` into axes; a malformed one or a repeated name is refused."""
    axes: list[Axis] = []
    for spec in specs:
        m = _SPEC.match(spec)
        if not m or keyword.iskeyword(m.group(1)):
            raise SweepError(f"--sweep expects \"NAME in EXPRESSION\", e.g. "
                             f"--sweep \"alpha in [0.1, 1, 10]\"; got {spec!r}")
        if m.group(1) in {a.name for a in axes}:
            raise SweepError(f"--sweep names {m.group(1)!r} twice")
        axes.append(Axis(m.group(1), m.group(2)))
    return axes


def elements(axes: Sequence[Axis], evaluate: Callable[[str], Any], zipped: bool = False,
             limit: int = MAX_ELEMENTS) -> list[dict[str, Any]]:
    """Every element's parameters: the cartesian product of the axes (the last varies fastest),
    or the axes paired (``zipped``, all of the same length). ``evaluate`` evaluates an
    expression in the kernel. Refuses an empty sweep, one over ``limit`` elements, and values
    that cannot be pickled (named), before anything is submitted."""
    if not axes:
        raise SweepError("a sweep needs at least one --sweep \"NAME in EXPRESSION\"")
    values: list[list[Any]] = []
    for axis in axes:
        try:
            got = evaluate(axis.expr)
        except Exception as e:
            raise SweepError(f"--sweep {axis.name}: {axis.expr!r} raised "
                             f"{type(e).__name__}: {e}") from None
        try:
            seq = list(itertools.islice(iter(got), limit + 1))
        except TypeError:
            raise SweepError(f"--sweep {axis.name}: {axis.expr!r} is a "
                             f"{type(got).__name__}, not something to iterate over") from None
        values.append(seq)
    if zipped:
        lengths = {a.name: len(v) for a, v in zip(axes, values, strict=True)}
        if len(set(lengths.values())) > 1:
            raise SweepError("--zip pairs the sweeps, so they need the same length; got "
                             + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        count = min(lengths.values())
    else:
        count = 1
        for v in values:
            count *= len(v)
    if count == 0:
        empty = [a.name for a, v in zip(axes, values, strict=True) if not v]
        raise SweepError(f"the sweep has no elements ({', '.join(empty)} is empty); "
                         "nothing was submitted")
    if count > limit:
        raise SweepError(f"the sweep has {'more than ' if count > limit + 1 else ''}{count} "
                         f"elements, over the limit of {limit}; raise it with --max-elements N "
                         "(nothing was submitted)")
    _check_pickles(axes, values)
    rows = zip(*values, strict=True) if zipped else itertools.product(*values)
    names = [a.name for a in axes]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _check_pickles(axes: Sequence[Axis], values: Sequence[list[Any]]) -> None:
    bad = {}
    for axis, seq in zip(axes, values, strict=True):
        for i, v in enumerate(seq):
            try:
                pickle.dumps(v)
            except Exception as e:
                bad[axis.name] = f"value {i} ({type(v).__name__}) cannot be pickled: {e}"
                break
    if bad:
        raise SweepError("sweep values must be picklable: "
                         + "; ".join(f"{k}: {v}" for k, v in bad.items())
                         + " (nothing was submitted)")


# -- ids ----------------------------------------------------------------------------------------

def element_id(prefix: str, index: int) -> str:
    """Element ``index`` of the array whose 24-hex-digit prefix is ``prefix``: a job id of 32
    hex digits whose last 8 are the index in decimal (so a job script finds the directory of
    its element from the array index with ``printf %08d``)."""
    return f"{prefix}{index:08d}"


def array_ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"`` (SLURM's ``--array`` list)."""
    out: list[str] = []
    idx = sorted(set(indices))
    start = prev = idx[0]
    for i in idx[1:] + [None]:   # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if i is not None:
            start = prev = i
    return ",".join(out)


def task_set(text: str) -> set[int]:
    """``3``, ``3,4``, ``5-10:1`` (Grid Engine's ``tasks``, Kubernetes' completed indexes) as
    numbers."""
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if m:
            lo, hi, step = int(m.group(1)), int(m.group(2) or m.group(1)), int(m.group(3) or 1)
            out.update(range(lo, hi + 1, step))
    return out


# -- progress ------------------------------------------------------------------------------------

@dataclass
class Counts:
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0
    cancelled: int = 0     # of the failed ones

    @property
    def total(self) -> int:
        return self.done + self.running + self.pending + self.failed

    @property
    def finished(self) -> int:
        return self.done + self.failed


def count(states: Iterable[JobState]) -> Counts:
    c = Counts()
    for s in states:
        if s is JobState.COMPLETED:
            c.done += 1
        elif s.final:
            c.failed += 1
            c.cancelled += s is JobState.CANCELLED
        elif s is JobState.RUNNING:
            c.running += 1
        else:
            c.pending += 1
    return c


def overall_state(c: Counts) -> JobState:
    """One state for a whole sweep: running while an element runs, pending while one waits,
    then completed (every element), cancelled (every element) or failed (some)."""
    if c.running:
        return JobState.RUNNING
    if c.pending:
        return JobState.PENDING
    if not c.failed:
        return JobState.COMPLETED
    return JobState.FAILED if c.done or c.cancelled < c.failed else JobState.CANCELLED


def array_label(native_id: str) -> str:
    """The array an element's native id belongs to, for display: ``12_3`` (SLURM, local) ->
    ``12``, ``12.3`` (Grid Engine) -> ``12``, ``12[3].head`` (PBS) -> ``12[].head``."""
    m = re.fullmatch(r"(\d+)\[\d+\](.*)", native_id)
    if m:
        return f"{m.group(1)}[]{m.group(2)}"
    return re.sub(r"^(\d+)[_.]\d+$", r"\1", native_id)


def progress_line(c: Counts, elapsed: float, width: int = 24) -> str:
    """``[#######.........] 7/24 done, 3 running, 14 pending, 0 failed, ETA 12s``."""
    total = max(c.total, 1)
    filled = round(width * c.finished / total)
    bar = "#" * filled + "." * (width - filled)
    eta = ""
    if 0 < c.finished < c.total and elapsed > 0:
        eta = f", ETA {_short(elapsed / c.finished * (c.total - c.finished))}"
    return (f"[{bar}] {c.finished}/{c.total}: {c.done} done, {c.running} running, "
            f"{c.pending} pending, {c.failed} failed{eta}")


def _short(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


# -- results -------------------------------------------------------------------------------------

_SCALARS = (int, float, complex, str, bytes, bool, type(None))


def is_scalar(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return True
    try:
        import numpy as np
    except ImportError:
        return False
    return isinstance(value, np.generic)


def gather(params: Sequence[dict[str, Any]], values: Sequence[dict[str, Any] | None],
           names: Sequence[str]) -> dict[str, Any]:
    """One object per name the cell binds, keyed by the parameters. ``values[i]`` is element
    ``i``'s names (None: the element has no result). A name whose every finished value is a
    scalar becomes a pandas DataFrame (one row per element, one column per parameter plus the
    name) when pandas is importable; otherwise, and for other values, a dict keyed by the
    parameter tuple (missing elements left out)."""
    keys = [tuple(p.values()) for p in params]
    columns = list(params[0]) if params else []
    out: dict[str, Any] = {}
    for name in names:
        have = [(k, p, v[name]) for k, p, v in zip(keys, params, values, strict=True)
                if v is not None and name in v]
        if not have:
            continue
        if all(isinstance(x, types.ModuleType) for _, _, x in have):
            out[name] = have[0][2]      # an import: bound once, as a cell would bind it
            continue
        if all(is_scalar(x) for _, _, x in have):
            try:
                import pandas as pd
            except ImportError:
                pd = None
            if pd is not None:
                out[name] = pd.DataFrame([{**p, name: x} for _, p, x in have],
                                         columns=[*columns, name])
                continue
        out[name] = {k: x for k, _, x in have}
    return out
