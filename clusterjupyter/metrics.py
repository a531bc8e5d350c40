"""Per-profile metrics from what the monitor already records — no scheduler is asked anything.

* jobs by state, from the journal's jobs;
* queue wait (submitted → started) and run time (started → finished) percentiles over each
  profile's newest jobs;
* counters the monitor and the submit path add to the journal as they go
  (:data:`COUNTERS`): scheduler commands issued, reconnections, submissions, submissions that
  were retried after a dropped connection.

Every process of the user (kernels, the server, the command line) writes to and reads the same
journal, so the figures cover them all. Used by ``%cluster metrics``, the server's
``GET /clusterjupyter/metrics`` and the health check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .journal import Journal, default_journal, format_seconds
from .states import JobState

COUNTERS = ("submissions", "submissions_retried", "reconnects", "scheduler_commands")
#: final states that count as errors (a cell's own exception is a failed job too)
ERROR_STATES = (JobState.FAILED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY, JobState.LOST)
QUANTILES = (0.5, 0.9, 0.99)
#: jobs per profile the timings are taken over (the newest)
WINDOW = 1000


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p90", "p99", "max"}`` of ``values`` (nearest rank); ``{}`` if there are none."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{round(q * 100)}": ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
           for q in QUANTILES}
    out["max"] = ordered[-1]
    return out


@dataclass
class ProfileMetrics:
    """The figures of one profile."""

    profile: str
    states: dict[str, int] = field(default_factory=dict)      # jobs by state
    counters: dict[str, int] = field(default_factory=dict)
    queue_wait: dict[str, float] = field(default_factory=dict)   # seconds, percentiles
    run_time: dict[str, float] = field(default_factory=dict)
    timed: int = 0                                             # jobs the timings cover

    @property
    def errors(self) -> int:
        """Jobs that ended failed, timed out, out of memory or lost."""
        return sum(self.states.get(s.value, 0) for s in ERROR_STATES)

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "states": self.states,
                "counters": {k: self.counters.get(k, 0) for k in COUNTERS},
                "errors": self.errors, "queue_wait": self.queue_wait,
                "run_time": self.run_time, "timed_jobs": self.timed}


def collect(journal: Journal | None = None) -> dict[str, ProfileMetrics]:
    """Metrics of every profile that has jobs or counters in the journal, by profile name."""
    journal = journal or default_journal()
    out: dict[str, ProfileMetrics] = {}

    def of(profile: str) -> ProfileMetrics:
        return out.setdefault(profile, ProfileMetrics(profile))

    for profile, states in journal.state_counts().items():
        of(profile).states = states
    for profile, counters in journal.counters().items():
        of(profile).counters = counters
    waits: dict[str, list[float]] = {}
    runs: dict[str, list[float]] = {}
    for profile, state, submitted, started, finished in journal.durations(WINDOW):
        if started is None:
            continue
        waits.setdefault(profile, []).append(max(started - submitted, 0.0))
        if finished is not None and JobState(state).final:
            runs.setdefault(profile, []).append(max(finished - started, 0.0))
    for profile, values in waits.items():
        m = of(profile)
        m.queue_wait, m.timed = percentiles(values), len(values)
    for profile, values in runs.items():
        of(profile).run_time = percentiles(values)
    return dict(sorted(out.items()))


def error_counts(journal: Journal | None = None) -> dict[str, int]:
    """Jobs that ended in error, by profile (for the health check)."""
    return {name: m.errors for name, m in collect(journal).items()}


def _timing(p: dict[str, float]) -> str:
    if not p:
        return "-"
    return " / ".join(format_seconds(p[k]) if p[k] >= 1 else f"{p[k]:.2f}s"
                      for k in ("p50", "p90", "p99"))


def format_table(metrics: dict[str, ProfileMetrics]) -> str:
    """A text table (``%cluster metrics``)."""
    if not metrics:
        return "no jobs in the journal yet"
    lines = []
    for m in metrics.values():
        states = ", ".join(f"{k} {v}" for k, v in sorted(m.states.items())) or "no jobs"
        counters = ", ".join(f"{k.replace('_', ' ')} {m.counters.get(k, 0)}" for k in COUNTERS)
        lines += [f"{m.profile}: {states} (errors {m.errors})",
                  f"  {counters}",
                  f"  queue wait p50/p90/p99: {_timing(m.queue_wait)}; "
                  f"run time p50/p90/p99: {_timing(m.run_time)} (newest {m.timed} jobs)"]
    return "\n".join(lines)
