"""The monitor's decision, as a pure function: every corner in one line each (no services)."""

from __future__ import annotations

from clusterjupyter.monitor import (CANCEL_REQUESTED, INTEGRITY, NEVER_GRACE, SIGNAL_GRACE,
                                    VANISH_GRACE, Facts, decide, needs_scheduler)
from clusterjupyter.schedulers.base import NativeStatus
from clusterjupyter.states import JobState as S

T0 = 1000.0


def facts(**kw) -> Facts:
    base = dict(state=S.RUNNING, now=T0 + 10, since=T0, native_id="42")
    return Facts(**{**base, **kw})


def native(state: S, reason: str = "", **kw) -> NativeStatus:
    return NativeStatus(state, reason, **kw)


COMPLETED = {"state": "completed", "exit_code": 0, "result": True}
SIGTERM = {"state": "cancelled", "exit_code": 143, "reason": "terminated by SIGTERM",
           "signal": 15}


def test_nothing_new_keeps_waiting():
    d = decide(facts())
    assert d.end is None and not d.changes and not d.cancel and not d.ask


def test_completed_exit_file_ends_without_the_scheduler():
    assert decide(facts(exit=COMPLETED)).end == (S.COMPLETED, "", 0)


def test_cell_error_is_the_runners_word():
    exit = {"state": "failed", "exit_code": 1, "reason": "the cell raised ValueError: x",
            "cell_error": True}
    assert decide(facts(exit=exit)).end == (S.FAILED, exit["reason"], 1)
    assert not needs_scheduler(exit, False)


def test_started_file_moves_pending_to_running():
    d = decide(facts(state=S.PENDING, started=T0 + 3))
    assert d.changes == {"state": S.RUNNING, "reason": "", "started": T0 + 3}


def test_scheduler_running_moves_pending_to_running():
    d = decide(facts(state=S.PENDING, queried=True, native=native(S.RUNNING, host="n1")))
    assert d.changes["state"] is S.RUNNING and d.changes["host"] == "n1"


def test_queue_reason_is_shown_but_a_cancel_stays_visible():
    d = decide(facts(state=S.PENDING, queried=True, native=native(S.PENDING, "Priority")))
    assert d.changes == {"reason": "Priority"}
    d = decide(facts(state=S.PENDING, reason=CANCEL_REQUESTED, queried=True,
                     native=native(S.PENDING, "Priority")))
    assert d.changes == {}


def test_vanished_job_is_lost_only_after_the_grace():
    d = decide(facts(queried=True, native=None))
    assert d.end is None and d.clocks["vanished_at"] == T0 + 10
    d = decide(facts(queried=True, native=None, vanished_at=T0 + 10 - VANISH_GRACE - 0.1))
    assert d.end is not None and d.end[0] is S.LOST


def test_vanished_clock_resets_when_the_job_is_back():
    d = decide(facts(queried=True, native=native(S.RUNNING), vanished_at=T0 + 5))
    assert d.clocks["vanished_at"] is None and d.end is None


def test_vanished_after_a_cancel_is_cancelled():
    d = decide(facts(queried=True, cancel_requested=True, vanished_at=T0))
    assert d.end is not None and d.end[0] is S.CANCELLED


def test_late_accounting_completed_without_exit_file_waits_then_fails():
    d = decide(facts(queried=True, native=native(S.COMPLETED)))
    assert d.end is None and d.clocks["ended_at"] == T0 + 10
    d = decide(facts(queried=True, native=native(S.COMPLETED),
                     ended_at=T0 + 10 - VANISH_GRACE - 0.1))
    assert d.end is not None and d.end[0] is S.FAILED and "without running" in d.end[1]


def test_scheduler_timeout_without_exit_file_is_a_timeout():
    d = decide(facts(queried=True, native=native(S.TIMEOUT, "time limit", exit_code=0)))
    assert d.end == (S.TIMEOUT, "time limit", 0)


def test_a_brand_new_job_is_not_ended_by_a_stale_answer():
    d = decide(facts(now=T0 + 0.5, queried=True, native=native(S.FAILED, "old")))
    assert d.end is None


def test_stopped_runner_asks_the_scheduler_first():
    d = decide(facts(exit=SIGTERM, queried=False))
    assert d.end is None and d.ask
    assert needs_scheduler(SIGTERM, False) and not needs_scheduler(SIGTERM, True)


def test_stopped_runner_waits_for_the_schedulers_why_then_takes_it():
    d = decide(facts(exit=SIGTERM, queried=True, native=native(S.RUNNING)))
    assert d.end is None and d.ask and d.clocks["stopped_at"] == T0 + 10
    d = decide(facts(exit=SIGTERM, queried=True, native=None, stopped_at=T0 + 9))
    assert d.end is None and d.ask           # gone, its exit status not known yet
    d = decide(facts(exit=SIGTERM, queried=True, native=native(S.TIMEOUT, "time limit")))
    assert d.end is not None and d.end[0] is S.TIMEOUT


def test_stopped_runner_without_explanation_is_its_own_word_after_the_grace():
    d = decide(facts(exit=SIGTERM, queried=True, native=None,
                     stopped_at=T0 + 10 - SIGNAL_GRACE - 0.1))
    assert d.end == (S.CANCELLED, "terminated by SIGTERM", 143)


def test_cancel_requested_ends_a_stopped_runner_at_once():
    d = decide(facts(exit=SIGTERM, cancel_requested=True))
    assert d.end == (S.CANCELLED, "cancelled by the user", 143)


def test_runner_timeout_needs_no_scheduler():
    exit = {"state": "timeout", "exit_code": 152, "reason": "time limit reached", "signal": 24}
    assert not needs_scheduler(exit, False)
    assert decide(facts(exit=exit, native=None)).end == (S.TIMEOUT, "time limit reached", 152)


def test_forged_exit_file_is_an_integrity_failure_and_stops_the_job():
    d = decide(facts(forged="the exit file state.json is not signed",
                     native=native(S.RUNNING)))
    assert d.end is not None and d.end[0] is S.FAILED and d.end[1].startswith(INTEGRITY)
    assert d.cancel
    d = decide(facts(forged="x", native=native(S.COMPLETED)))
    assert d.end is not None and not d.cancel


def test_never_starting_job_is_cancelled_only_for_a_waiting_cell():
    never = native(S.PENDING, "DependencyNeverSatisfied", never=True)
    d = decide(facts(state=S.PENDING, queried=True, native=never))
    assert d.end is None and d.clocks["never_since"] == T0 + 10
    d = decide(facts(state=S.PENDING, queried=True, native=never, waiters=0,
                     never_since=T0))
    assert d.end is None
    d = decide(facts(state=S.PENDING, queried=True, native=never, waiters=1,
                     never_since=T0 + 10 - NEVER_GRACE))
    assert d.end is not None and d.end[0] is S.CANCELLED and d.cancel
    assert "could never start" in d.end[1]
