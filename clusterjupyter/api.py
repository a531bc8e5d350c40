"""The library's operations on jobs and profiles, shared by the magics, the panel and the server.

Everything here works from the journal and the profiles file, so it serves any process: a
kernel, another kernel, or the Jupyter server. Nothing here unpickles anything except
:func:`fetch_result`, which verifies signatures first.
"""

from __future__ import annotations

from typing import Any, Callable

from .journal import Journal, JobRecord, default_journal
from .states import JobState

LOG_STREAMS = ("stdout", "stderr", "scheduler")


def journal() -> Journal:
    """The journal of this user (one object per process; reopened if the path changed)."""
    return default_journal()


def list_jobs(states: tuple[str, ...] | None = None, profile: str | None = None,
              limit: int = 200) -> list[JobRecord]:
    """Jobs of this user, newest first, from all kernels."""
    if states:
        states = tuple(JobState.parse(s).value for s in states)
    return journal().list(states, profile, limit)


REFRESH_EVERY = 3.0


def refresh_active(force: bool = False) -> None:
    """Bring the journal's active jobs up to date (one scheduler query per profile).

    Lets any process (the server, a new kernel) notice jobs whose submitting kernel is gone.
    Throttled to one pass every few seconds unless ``force``.
    """
    import time

    j = journal()
    now = time.time()
    if not force and now - j.refreshed < REFRESH_EVERY:
        return
    j.refreshed = now
    refresh_jobs(j.active())


def refresh_jobs(records: list[JobRecord],
                 on_error: Callable[[str, Exception], Any] | None = None) -> None:
    """Bring these jobs' records up to date: their active ones, one scheduler query per profile.

    The one way the magics, the panel and the server refresh jobs. A profile that fails (gone,
    unreachable) is passed to ``on_error(profile, exception)`` and the others go on.
    """
    from .backends import backend_for
    from .profiles import load_profiles

    groups: dict[str, list[JobRecord]] = {}
    for rec in records:
        if not rec.state.final:
            groups.setdefault(rec.profile, []).append(rec)
    if not groups:
        return
    profiles = load_profiles()
    for name, recs in groups.items():
        try:
            if name not in profiles:
                raise KeyError(f"profile {name!r} no longer exists")
            backend_for(profiles[name]).refresh(recs)
        except Exception as e:  # an unreachable cluster must not break the others
            if on_error is not None:
                on_error(name, e)


#: elements of one sweep a listing carries at most (those not completed first)
PER_SWEEP = 100


def list_rows(states: tuple[str, ...] | None = None, profile: str | None = None,
              limit: int = 200, per_sweep: int = PER_SWEEP
              ) -> tuple[list[JobRecord], dict[str, dict[str, Any]]]:
    """What the panel and the sidebar list, newest first: the ``limit`` newest jobs that are no
    sweep's element, and for each of the ``limit`` newest sweeps with an element in ``states``
    its elements' latest attempts in ``states`` (at most ``per_sweep``, those not completed
    first). Each element's id maps to its sweep (``refs``): id, name, size, the element's index
    and attempt, the sweep's one state and its counts over all its elements, how many of them
    are ``listed``."""
    from .sweep import overall_state
    from .sweeplist import sweep_counts

    if states:
        states = tuple(JobState.parse(s).value for s in states)
    j = journal()
    records = j.list(states, profile, limit, singles=True)
    refs: dict[str, dict[str, Any]] = {}
    for s in j.sweep_overview(profile, limit):
        if states and not any(st.value in states for st in s["states"]):
            continue
        c = sweep_counts(s["states"])
        elements = [e for e in j.sweep_latest(s["id"], per_sweep)
                    if not states or e[2].state.value in states]
        summary = {"id": s["id"], "name": s["name"], "size": s["size"],
                   "state": overall_state(c).value, "listed": len(elements), "counts": {
                       "done": c.done, "running": c.running, "pending": c.pending,
                       "failed": c.failed}}
        for idx, attempt, rec in elements:
            refs[rec.id] = {**summary, "index": idx, "attempt": attempt, "latest": True}
            records.append(rec)
    records.sort(key=lambda r: r.submitted, reverse=True)
    return records, refs


def get_job(ref: str) -> JobRecord:
    """One job by id, id prefix, name or native id. Raises KeyError if unknown."""
    return journal().find(ref)


def job_logs(ref: str, stream: str = "stdout", tail: int | None = 200) -> str:
    """The last ``tail`` lines (all if None) of a job's stdout, stderr or scheduler log."""
    from .backends import backend_for_record

    if stream not in LOG_STREAMS:
        raise ValueError(f"unknown log stream {stream!r}; valid streams: {', '.join(LOG_STREAMS)}")
    rec = get_job(ref)
    return backend_for_record(rec).logs(rec, stream, tail)


def cancel_job(ref: str) -> JobRecord:
    """Cancel a job (no-op for a finished one); returns the updated record."""
    from .backends import backend_for_record

    rec = get_job(ref)
    if not rec.state.final:
        backend_for_record(rec).cancel(rec)
    return journal().get(rec.id) or rec


def list_profiles() -> list[dict[str, Any]]:
    """Every profile (the built-in ``local`` first) as plain dicts, with ``default`` marked."""
    from .profiles import load_profiles, default_profile_name

    default = default_profile_name()
    out = []
    for p in load_profiles().values():
        d = p.to_dict()
        d["default"] = p.name == default
        out.append(d)
    return out


def metrics() -> dict[str, dict[str, Any]]:
    """Per-profile figures from the journal (see :mod:`clusterjupyter.metrics`), as plain
    dicts: jobs by state, errors, counters, queue wait and run time percentiles."""
    from .metrics import collect

    return {name: m.to_json() for name, m in collect(journal()).items()}
