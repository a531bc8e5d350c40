"""A sweep among the jobs: ``%cluster jobs`` shows it as one row with its element counts
(its elements are not listed one by one; ``%cluster sweep ID`` does that)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from .failure import listed_reason
from .journal import JobRecord, Journal
from .states import JobState
from .sweep import Counts, array_label, count, overall_state


@dataclass
class Row:
    """One line of ``%cluster jobs``: a job, or a whole sweep."""

    id: str
    name: str
    profile: str
    native: str
    state: JobState
    elapsed: float | None
    reason: str
    submitted: float


def job_row(rec: JobRecord) -> Row:
    return Row(rec.id, rec.name, rec.profile, rec.native_id or "-", rec.state, rec.elapsed,
               listed_reason(rec), rec.submitted)


def sweep_counts(states: dict[JobState, int]) -> Counts:
    return count(s for s, n in states.items() for _ in range(n))


def sweep_row(s: dict[str, Any], now: float | None = None) -> Row:
    """A sweep of :meth:`Journal.sweep_overview` as one row (pure)."""
    c = sweep_counts(s["states"])
    state = overall_state(c)
    end = s["finished"] if state.final else (now or time.time())
    elapsed = end - s["started"] if s["started"] is not None and end is not None else None
    text = (f"sweep: {c.done}/{c.total} done, {c.running} running, {c.pending} pending, "
            f"{c.failed} failed")
    return Row(s["id"], f"{s['name']} [{c.total}]", s["profile"],
               array_label(s["native"]) or "-", state, elapsed, text, s["created"])


def job_rows(journal: Journal, states: tuple[str, ...] | None, profile: str | None,
             limit: int, refresh: Callable[[list[JobRecord]], None]) -> list[Row]:
    """The newest jobs and sweeps, newest first, each sweep one row; what is active is
    brought up to date first (``refresh``: one scheduler query per profile)."""
    singles = journal.list(states, profile, limit, singles=True)
    ids = [s["id"] for s in journal.sweep_overview(profile, limit)]
    refresh(singles + journal.sweep_jobs(ids))
    rows = [job_row(journal.get(r.id) or r) for r in singles]
    for s in journal.sweep_overview(profile, limit):
        if states is None or any(st.value in states for st in s["states"]):
            rows.append(sweep_row(s))
    rows.sort(key=lambda r: r.submitted, reverse=True)
    return rows[:limit]
