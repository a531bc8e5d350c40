"""The runner's and the line magic's decisions, as pure functions (no services, no job): how a
run ends, what the cell sends back, how a subcommand's words are read. The same steps on real
jobs are in test_local.py and test_reliability.py."""

from __future__ import annotations

import signal

import pytest
from IPython.core.error import UsageError

from clusterjupyter import _exitfile, _outputs, linemagic, options
from clusterjupyter._exitfile import Outcome, decide


def test_a_cell_that_ran_is_completed_whatever_its_value():
    verdict = decide(Outcome())
    assert (verdict.state, verdict.code, verdict.reason, verdict.extra) == ("completed", 0, "", {})


def test_the_cells_exception_is_a_failure_of_the_cell():
    verdict = decide(Outcome(cell_error=ZeroDivisionError("division by zero")))
    assert (verdict.state, verdict.code) == ("failed", 1)
    assert verdict.reason == "the cell raised ZeroDivisionError: division by zero"
    assert verdict.extra == {"cell_error": True}


def test_a_runner_failure_names_the_phase_and_is_internal():
    verdict = decide(Outcome(internal=OSError("disk full"), phase="sending results"))
    assert (verdict.state, verdict.code) == ("failed", _exitfile.INTERNAL_ERROR)
    assert verdict.reason == "OSError while sending results: disk full"
    assert verdict.extra == {"internal": True}


def test_a_signal_is_a_cancel_and_sigxcpu_a_time_limit():
    term = decide(Outcome(signum=signal.SIGTERM, phase="running the cell"))
    assert (term.state, term.code) == ("cancelled", 128 + signal.SIGTERM)
    assert term.reason == "terminated by SIGTERM while running the cell"
    xcpu = decide(Outcome(signum=signal.SIGXCPU, phase="running the cell"))
    assert (xcpu.state, xcpu.reason, xcpu.extra) == ("timeout", "time limit reached",
                                                     {"signal": signal.SIGXCPU})


def test_a_signal_wins_over_the_cells_exception():
    verdict = decide(Outcome(cell_error=ValueError("x"), signum=signal.SIGUSR1))
    assert verdict.state == "cancelled"


def test_the_exit_document_keeps_a_long_reason_short():
    doc = _exitfile.exit_document(decide(Outcome(cell_error=ValueError("x" * 5000))),
                                  1.0, 2.0, "node1", 42, has_result=True)
    assert len(doc["reason"]) == _exitfile.REASON_LIMIT + 2 and doc["reason"].endswith(" …")
    assert (doc["host"], doc["pid"], doc["result"], doc["cell_error"]) == ("node1", 42, True, True)


def _digest(value):
    return repr(value)


def test_changes_finds_new_rebound_mutated_and_deleted_names():
    kept, grown, gone = [1], [2], [3]
    inputs = {"kept": kept, "grown": grown, "gone": gone, "rebound": 1}
    before = _outputs.input_digests(inputs, _digest)
    grown.append(3)
    ns = {"__name__": "__main__", "get_ipython": None, "kept": kept, "grown": grown,
          "rebound": 2, "new": "n"}
    done = _outputs.changes(ns, inputs, before, _digest, declared_deleted=["never_sent"])
    assert done.values == {"grown": grown, "rebound": 2, "new": "n"}
    assert done.mutated == ["grown"]
    assert done.deleted == ["gone", "never_sent"]


def test_changes_leaves_out_what_a_magics_shell_put_there():
    helper = object()
    done = _outputs.changes({"_ih": helper, "y": 1}, {}, {}, _digest, injected={"_ih": helper})
    assert done.values == {"y": 1}


def test_functions_classes_and_modules_are_not_digested():
    inputs = {"f": test_changes_leaves_out_what_a_magics_shell_put_there, "t": int,
              "m": pytest, "x": [1]}
    assert set(_outputs.input_digests(inputs, _digest)) == {"x"}


def test_subcommand_words_are_read_or_refused_with_the_valid_options():
    assert linemagic.split_line("  logs abc --tail 3 ") == ("logs", "abc --tail 3")
    with pytest.raises(UsageError, match="did you mean 'jobs'"):
        linemagic.split_line("jbos")
    assert linemagic.parse_jobs("--active --profile hpc --limit 5") == linemagic.JobsQuery(
        ("pending", "running"), "hpc", 5)
    with pytest.raises(UsageError, match="valid: --active"):
        linemagic.parse_jobs("--bogus")
    assert linemagic.parse_jobs("--state failed,timeout").states == ("failed", "timeout")
    with pytest.raises(UsageError, match="finished"):
        linemagic.parse_jobs("--state finished")
    assert linemagic.parse_logs("abc --stderr -n 7") == linemagic.LogsQuery("abc", "stderr", 7)
    with pytest.raises(UsageError, match="whole number"):
        linemagic.parse_logs("abc --tail x")
    assert linemagic.parse_env("sync hpc --packages numpy,scipy --all", ("sync", "list")) \
        == linemagic.EnvQuery("sync", "hpc", ["numpy", "scipy"], True)
    with pytest.raises(UsageError, match="sync|list"):
        linemagic.parse_env("build", ("sync", "list"))


def test_an_unknown_cell_option_names_the_closest_and_every_valid_one():
    text = options.unknown_options("local --tiem 5 --cpus 2", ["--time", "--cpus"], "argparse")
    assert text == "unknown option --tiem (did you mean --time?)\nvalid options: --time, --cpus"
    assert options.unknown_options("--cpus", ["--cpus"], "needs a value").startswith(
        "needs a value\n")
