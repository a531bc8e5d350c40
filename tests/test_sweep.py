"""Sweeps: parameter expressions (pure), then real sweeps through a real InteractiveShell on
the local backend, an SSH host and the real SLURM, Grid Engine and PBS (one job array per sweep);
a fault every batch scheduler must handle alike is one scenario run on each of them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from IPython.utils.capture import capture_output

from clusterjupyter import api
from clusterjupyter.states import JobState
from clusterjupyter.sweep import (SweepError, array_label, array_ranges, count, elements,
                                  gather, parse_axes, progress_line)
from helpers import (close_module_env, ensure, make_env, scancel_leftovers, scheduler_env,
                     started_doc, wait_for, write_profiles)
from shells import new_shell, ok, run


# -- pure ---------------------------------------------------------------------------------------

def test_product_zip_and_refusals():
    axes = parse_axes(["a in [1, 2]", "b in 'xy'"])
    assert elements(axes, eval) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                    {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert elements(axes, eval, zipped=True) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(SweepError, match="same length"):
        elements(parse_axes(["a in [1]", "b in [1, 2]"]), eval, zipped=True)
    with pytest.raises(SweepError, match="no elements"):
        elements(parse_axes(["a in []"]), eval)
    with pytest.raises(SweepError, match="over the limit of 10; raise it with --max-elements"):
        elements(parse_axes(["a in range(11)"]), eval, limit=10)
    with pytest.raises(SweepError, match="a: value 1 \\(generator\\) cannot be pickled"):
        elements(parse_axes(["a in [1, (x for x in [])]"]), eval)
    with pytest.raises(SweepError, match='NAME in EXPRESSION'):
        parse_axes(["a = [1]"])
    with pytest.raises(SweepError, match="twice"):
        parse_axes(["a in [1]", "a in [2]"])


def test_array_ranges_and_progress():
    assert array_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert array_ranges([3]) == "3"
    line = progress_line(count([JobState.COMPLETED, JobState.FAILED, JobState.RUNNING,
                                JobState.PENDING]), 10.0)
    assert "2/4: 1 done, 1 running, 1 pending, 1 failed, ETA 10s" in line


def test_sweep_row_state_and_array_label():
    from clusterjupyter.sweeplist import sweep_row

    S = JobState
    assert array_label("12_3") == "12" and array_label("12.3") == "12"
    assert array_label("12[3].head") == "12[].head" and array_label("") == ""
    s = {"id": "ab" * 12, "name": "sw", "profile": "p", "created": 1.0, "size": 4,
         "native": "7[3]", "started": 10.0, "finished": 15.0,
         "states": {S.COMPLETED: 2, S.RUNNING: 1, S.PENDING: 1}}
    row = sweep_row(s, now=20.0)
    assert (row.state, row.native, row.elapsed, row.name) == (S.RUNNING, "7[]", 10.0, "sw [4]")
    assert row.reason == "sweep: 2/4 done, 1 running, 1 pending, 0 failed"
    done = sweep_row({**s, "states": {S.COMPLETED: 3, S.FAILED: 1}})
    assert (done.state, done.elapsed) == (S.FAILED, 5.0)
    assert sweep_row({**s, "states": {S.CANCELLED: 4}}).state is S.CANCELLED
    assert sweep_row({**s, "states": {S.COMPLETED: 4}}).state is S.COMPLETED
    assert sweep_row({**s, "states": {S.PENDING: 4}, "started": None}).elapsed is None


def test_results_table_or_dict(monkeypatch):
    params = [{"a": 1}, {"a": 2}, {"a": 3}]
    values = [{"s": 1.5, "m": [1]}, None, {"s": 2.5, "m": [3]}]
    got = gather(params, values, ["s", "m"])
    assert got["s"].to_dict("list") == {"a": [1, 3], "s": [1.5, 2.5]}
    assert got["m"] == {(1,): [1], (3,): [3]}
    monkeypatch.setitem(sys.modules, "pandas", None)      # pandas not importable
    assert gather(params, values, ["s"])["s"] == {(1,): 1.5, (3,): 2.5}


# -- local backend, real shell ------------------------------------------------------------------

CELL = """import os
pid = os.getpid()
if a == 2 and not os.path.exists(flag):
    raise ValueError(f"element {a} refused")
score = base * a + b
score"""


def test_local_sweep_failures_summary_retry(shell, tmp_path):
    flag = tmp_path / "flag"
    ok(shell, f"base = 10\nflag = {str(flag)!r}")
    with capture_output() as cap:
        value = ok(shell, '%%cluster --sweep "a in [1, 2, 3]" --sweep "b in range(2)" '
                          '--max-running 2 --job sw\n' + CELL)
    assert "4 of 6 completed, 2 failed" in cap.stdout
    assert "ValueError: element 2 refused" in cap.stdout
    sw = shell.user_ns["sw"]
    score = shell.user_ns["score"]
    assert score.to_dict("list") == {"a": [1, 1, 3, 3], "b": [0, 1, 0, 1],
                                     "score": [10, 11, 30, 31]}
    assert value["value"].tolist() == [10, 11, 30, 31]
    # provenance: every element ran in a process of its own, none of them the kernel
    pids = shell.user_ns["pid"]["pid"].tolist()
    assert len(set(pids)) == 4 and os.getpid() not in pids
    assert [e.index for e in sw.failed()] == [2, 3]
    assert isinstance(sw.failed()[0].exception, ValueError)
    # %cluster jobs: the sweep is one row with its element counts, beside a single job
    ok(shell, "%%cluster\nsingle = 1")
    with capture_output() as cap:
        ok(shell, "%cluster jobs")
    rows = [ln for ln in cap.stdout.splitlines() if ln.startswith(sw.id[:8])]
    assert len(rows) == 1 and "sweep: 4/6 done, 0 running, 0 pending, 2 failed" in rows[0]
    assert " failed " in rows[0] and "[6]" in rows[0]
    assert not any(e.job.id[:8] in cap.stdout for e in sw.elements if e.job.id[:8] != sw.id[:8])
    assert len(cap.stdout.splitlines()) == 3          # header, the single job, the sweep
    with capture_output() as cap:
        ok(shell, "%cluster jobs --state completed --limit 1")
    assert len(cap.stdout.splitlines()) == 2 and sw.id[:8] not in cap.stdout
    # %cluster sweep ID: each element's state, native id and first error line
    with capture_output() as cap:
        ok(shell, f"%cluster sweep {sw.id[:8]}")
    lines = {int(ln.split()[0]): ln for ln in cap.stdout.splitlines()
             if ln.strip()[:1].isdigit()}
    assert sorted(lines) == list(range(6))
    for e in sw.elements:
        assert e.job.record.native_id in lines[e.index] and e.state.value in lines[e.index]
    assert "raised ValueError: element 2 refused" in lines[2]
    assert "raised" not in lines[0]
    # retry: only the failed elements run again, as a new array of the same sweep
    flag.write_text("")
    first_ids = {e.index: e.job.id for e in sw.elements}
    sw.retry()
    counts = sw.wait(120)
    assert counts.done == 6 and counts.failed == 0
    again = {e.index for e in sw.elements if e.job.id != first_ids[e.index]}
    assert again == {2, 3}
    assert sorted(e.index for e in sw) == list(range(6))     # iteration: finished elements
    assert sw.results()["score"]["score"].tolist() == [10, 11, 20, 21, 30, 31]


def test_every_element_failing_raises_and_bad_sweeps_submit_nothing(shell):
    r = run(shell, '%%cluster --sweep "a in [1, 2]"\nraise KeyError(a)')
    assert not r.success and "0 of 2 completed, 2 failed" in str(r.error_in_exec)
    before = len(api.list_jobs())
    for line, why in [('--sweep "a in []"', "no elements"),
                      ('--sweep "a in range(20)" --max-elements 5', "over the limit of 5"),
                      ('--sweep "a in [lambda: 1]"', "cannot be pickled"),
                      ('--sweep "a in missing_name"', "NameError")]:
        r = run(shell, f"%%cluster {line}\nx = a")
        assert not r.success and why in str(r.error_in_exec), (line, r.error_in_exec)
    assert len(api.list_jobs()) == before


def test_local_time_limit_cancel_and_kernel_restart(shell):
    ok(shell, '%%cluster --time 0:00:08 --sweep "a in [0, 1, 2]" --job tl\n'
              'import time\nif a == 1:\n    time.sleep(30)\nout = a')
    tl = shell.user_ns["tl"]
    assert [e.state for e in tl.elements] == [JobState.COMPLETED, JobState.TIMEOUT,
                                              JobState.COMPLETED]
    # --async, then a new shell (a kernel restart) picks up what finished
    ok(shell, '%%cluster --async --sweep "a in range(4)" --job sw\nimport time\n'
              'time.sleep(0.5 if a < 3 else 60)\nsq = a * a')
    sw = shell.user_ns["sw"]
    wait_for(lambda: sw.counts().done == 3, 120, "three elements")
    sid = sw.id
    shell2 = new_shell()
    with capture_output() as cap:
        ok(shell2, f"%cluster sweep {sid[:8]}")
    assert "3/4" not in cap.stdout or "1 running" in cap.stdout
    assert cap.stdout.count("completed") >= 3
    with capture_output() as cap:
        ok(shell2, f"%cluster result {sid[:8]}")
    assert shell2.user_ns["sq"]["sq"].tolist() == [0, 1, 4]
    # cancelling the whole sweep stops the running element
    from clusterjupyter.sweeps import Sweep

    counts = Sweep(sid).cancel()
    assert counts.done == 3 and counts.failed == 1
    assert Sweep(sid).elements[3].state is JobState.CANCELLED


# -- a sweep whose element fails until a flag file exists (its retry then succeeds) --------------

def _sweep_until_flag(sh, tmp_path, options: str, when: str, then: str,
                      more: str = "") -> tuple[Path, str]:
    """Run ``%%cluster OPTIONS --job sw`` on a cell that does THEN where WHEN holds while the file
    ``flag`` is missing, and then ``sq = a * a`` and MORE; the flag and the cell's output back."""
    flag = tmp_path / "flag"
    ok(sh, f"flag = {str(flag)!r}")
    with capture_output() as cap:
        ok(sh, f"%%cluster {options} --job sw\nimport os, time\n"
               f"if {when} and not os.path.exists(flag):\n    {then}\nsq = a * a\n{more}")
    return flag, cap.stdout


def _retry_gives(sw, flag: Path, sq: list[int]) -> None:
    """With the flag there, the retry of the failed elements completes the full result set."""
    flag.write_text("")
    sw.retry()
    assert sw.wait(300).done == len(sq), sw.summary()
    assert sw.results()["sq"]["sq"].tolist() == sq


@pytest.mark.ssh
def test_ssh_host_without_scheduler_sweep(cj_home, tmp_path):
    """An SSH host without a scheduler: the elements run there under one xargs -P, started
    over one SSH command; a failed element and its retry as on the local backend."""
    from helpers import ssh_profile

    ssh = ensure("sshd")["ssh"]
    write_profiles(cj_home, {"remote": ssh_profile(ssh, tmp_path / "remote")})
    sh = new_shell()
    flag, out = _sweep_until_flag(sh, tmp_path, 'remote --max-running 2 --sweep "a in range(4)"',
                                  "a == 2", 'raise ValueError("two")', "ppid = os.getppid()")
    assert "3 of 4 completed, 1 failed" in out and "ValueError: two" in out
    sw = sh.user_ns["sw"]
    assert all(str(tmp_path / "remote") in e.job.record.job_dir for e in sw.elements)
    assert os.getpid() not in sh.user_ns["ppid"]["ppid"].tolist()
    _retry_gives(sw, flag, [0, 1, 4, 9])


# -- SLURM --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    slurm = ensure("slurm")["slurm"]
    res = {"partition": slurm["partition"], "time": "10m", "mem": "200M"}
    base = tmp_path_factory.mktemp("sweep-slurm")
    profiles = {"slurm": {"scheduler": "slurm", "python": sys.executable,
                          "workdir": str(base / "work"), "resources": res}}
    e, mp = make_env(tmp_path_factory, "sweep-slurm", profiles)
    yield e
    scancel_leftovers()
    close_module_env(mp)


@pytest.mark.slurm
def test_slurm_sweep_one_array_kill_one_and_retry(slurm_env, tmp_path):
    write_profiles(slurm_env.base / "cj", slurm_env.profiles)
    sh = new_shell()
    flag, _ = _sweep_until_flag(sh, tmp_path, 'slurm --async --sweep "a in range(5)"', "a == 3",
                                "time.sleep(120)")
    sw = sh.user_ns["sw"]
    recs = [e.job.record for e in sw.elements]
    arrays = {r.native_id.split("_")[0] for r in recs}
    assert len(arrays) == 1 and [r.native_id.split("_")[1] for r in recs] == list("01234")
    array = arrays.pop()
    wait_for(lambda: os.path.exists(os.path.join(recs[3].job_dir, "started.json")), 240,
             "element 3 to start")
    subprocess.run(["scancel", f"{array}_3"], check=True)
    counts = sw.wait(300)
    assert counts.done == 4 and counts.failed == 1
    assert sw.elements[3].state in (JobState.CANCELLED, JobState.FAILED)
    # provenance: each element ran as its task of the one array job, in another process
    env0 = scheduler_env(sw.elements[1].job.record)
    assert env0["SLURM_ARRAY_JOB_ID"] == array and env0["SLURM_ARRAY_TASK_ID"] == "1"
    assert started_doc(sw.elements[1].job.record)["pid"] != os.getpid()
    # a new shell (kernel restart) brings back everything finished so far
    sh = new_shell()
    with capture_output() as cap:
        ok(sh, f"%cluster result {sw.id[:8]}")
    assert "4 of 5 completed, 1 failed" in cap.stdout
    assert sh.user_ns["sq"]["sq"].tolist() == [0, 1, 4, 16]
    # retry: element 3 alone, as a new array of the same sweep; then the full result set
    flag.write_text("")
    from clusterjupyter.sweeps import Sweep

    sw = Sweep(sw.id)
    sw.retry()
    new = sw.elements[3].job.record.native_id
    assert new.split("_")[0] != array and new.endswith("_3")
    assert sw.wait(300).done == 5
    with capture_output() as cap:
        ok(sh, f"%cluster result {sw.id[:8]}")
    assert sh.user_ns["sq"]["sq"].tolist() == [0, 1, 4, 9, 16]


# -- Grid Engine --------------------------------------------------------------------------------

def _sge_profile(cj_home, monkeypatch) -> None:
    sge = ensure("sge")["sge"]
    monkeypatch.delenv("SGE_ROOT", raising=False)
    monkeypatch.delenv("SGE_CELL", raising=False)
    opts = {"bin_dir": "/usr/lib/gridengine",
            "command_env": {"SGE_ROOT": sge["sge_root"], "SGE_CELL": sge["sge_cell"]}}
    write_profiles(cj_home, {"sge": {"scheduler": "sge", "scheduler_options": opts,
                                     "resources": {"partition": sge["queue"]}}})


@pytest.mark.sge
def test_sge_sweep_one_array_task_ids_and_retry(cj_home, monkeypatch, tmp_path):
    _sge_profile(cj_home, monkeypatch)
    sh = new_shell()
    flag, out = _sweep_until_flag(sh, tmp_path, 'sge --sweep "a in [1, 2, 3]"', "a == 2",
                                  'raise ValueError("two")')
    assert "2 of 3 completed, 1 failed" in out and "ValueError: two" in out
    sw = sh.user_ns["sw"]
    natives = [e.job.record.native_id for e in sw.elements]
    array = natives[0].split(".")[0]
    assert natives == [f"{array}.1", f"{array}.2", f"{array}.3"]
    env = scheduler_env(sw.elements[2].job.record)
    assert env["JOB_ID"] == array and env["SGE_TASK_ID"] == "3"
    assert sh.user_ns["sq"]["sq"].tolist() == [1, 9]
    _retry_gives(sw, flag, [1, 4, 9])
    assert sw.elements[1].job.record.native_id.endswith(".2")


@pytest.mark.sge
def test_sge_task_killed_kernel_restart_and_retry(cj_home, monkeypatch, tmp_path):
    """One task of the array killed with Grid Engine's own ``qdel JOB -t N``; a new shell (a
    kernel restart) brings back what finished; the retry of that task gives the full set."""
    _sge_profile(cj_home, monkeypatch)
    sh = new_shell()
    flag, _ = _sweep_until_flag(sh, tmp_path, 'sge --async --sweep "a in range(4)"', "a == 2",
                                "time.sleep(120)")
    sw = sh.user_ns["sw"]
    recs = [e.job.record for e in sw.elements]
    array = recs[0].native_id.split(".")[0]
    assert [r.native_id for r in recs] == [f"{array}.{t}" for t in (1, 2, 3, 4)]
    wait_for(lambda: os.path.exists(os.path.join(recs[2].job_dir, "started.json")), 240,
             "element 2 to start")
    sge = ensure("sge")["sge"]
    subprocess.run(["/usr/lib/gridengine/qdel", array, "-t", "3"], check=True, timeout=60,
                   capture_output=True,
                   env=dict(os.environ, SGE_ROOT=sge["sge_root"], SGE_CELL=sge["sge_cell"]))
    counts = sw.wait(300)
    assert counts.done == 3 and counts.failed == 1, sw.summary()
    assert sw.elements[2].state in (JobState.CANCELLED, JobState.FAILED)
    sh = new_shell()
    with capture_output() as cap:
        ok(sh, f"%cluster result {sw.id[:8]}")
    assert "3 of 4 completed, 1 failed" in cap.stdout, cap.stdout
    assert sh.user_ns["sq"]["sq"].tolist() == [0, 1, 9]
    from clusterjupyter.sweeps import Sweep

    sw = Sweep(sw.id)
    _retry_gives(sw, flag, [0, 1, 4, 9])
    again = sw.elements[2].job.record.native_id
    assert again.split(".")[0] != array and again.endswith(".3")


# -- PBS (the Torque wrappers over SLURM) ------------------------------------------------------

@pytest.fixture(params=["torque", "pro"])
def pbs_profile(request, cj_home):
    """The wrappers take Torque's ``qsub -t`` and PBS Pro's ``qsub -J`` alike."""
    pbs = ensure("pbs")["pbs"]
    opts = {"bin_dir": pbs["bin_dir"], "arrays": request.param}
    write_profiles(cj_home, {"pbs": {"scheduler": "pbs", "python": sys.executable,
                                     "resources": {"mem": "200M"}, "scheduler_options": opts}})
    yield pbs
    scancel_leftovers()


def test_pbs_array_ids():
    from clusterjupyter.schedulers.pbs import PBSScheduler
    from clusterjupyter.transports import LocalTransport

    s = PBSScheduler(LocalTransport(), {})
    assert s.element_native_id("123[].head.example", 4) == "123[4].head.example"
    assert s.element_native_id("123", 4) == "123[4]"
    assert s.array_of("123[4].head.example") == "123[].head.example"
    assert s.status_command(["9", "123[]"], False)[-3:] == ["-t", "9", "123[]"]
    with pytest.raises(Exception, match='arrays must be "torque" or "pro", not \'sge\''):
        PBSScheduler(LocalTransport(), {"arrays": "sge"})


def _qdel(pbs: dict, native_id: str) -> None:
    subprocess.run([os.path.join(pbs["bin_dir"], "qdel"), native_id], check=True, timeout=60)


@pytest.mark.pbs
def test_pbs_sweep_one_array_raise_kill_and_retry(pbs_profile, tmp_path):
    sh = new_shell()
    flag = tmp_path / "flag"
    ok(sh, f"flag = {str(flag)!r}")
    ok(sh, '%%cluster pbs --async --sweep "a in range(5)" --job sw\n'
           'import os, time\nretried = os.path.exists(flag)\n'
           'if a == 1 and not retried:\n    raise ValueError("element one refused")\n'
           'if a == 3 and not retried:\n    time.sleep(120)\nsq = a * a')
    sw = sh.user_ns["sw"]
    recs = [e.job.record for e in sw.elements]
    array = recs[0].native_id.split("[")[0]
    assert [r.native_id for r in recs] == [f"{array}[{i}]" for i in range(5)]
    wait_for(lambda: os.path.exists(os.path.join(recs[3].job_dir, "started.json")), 240,
             "element 3 to start")
    _qdel(pbs_profile, f"{array}[3]")            # one element killed, as a user would
    counts = sw.wait(300)
    assert counts.done == 3 and counts.failed == 2, sw.summary()
    assert sw.elements[3].state in (JobState.CANCELLED, JobState.FAILED)
    assert isinstance(sw.elements[1].exception, ValueError)
    # provenance: each element ran as its task of the one array, with the PBS index set
    env = scheduler_env(sw.elements[2].job.record)
    assert env["PBS_ARRAYID"] == env["PBS_ARRAY_INDEX"] == "2"
    assert env["SLURM_ARRAY_JOB_ID"] == array
    assert started_doc(sw.elements[2].job.record)["pid"] != os.getpid()
    # a new shell (kernel restart) brings back everything finished so far, with the summary
    sh = new_shell()
    with capture_output() as cap:
        ok(sh, f"%cluster result {sw.id[:8]}")
    assert "3 of 5 completed, 2 failed" in cap.stdout
    assert "ValueError: element one refused" in cap.stdout
    assert sh.user_ns["sq"]["sq"].tolist() == [0, 4, 16]
    # retry: the two failed elements as a new array of the same sweep; the full result set
    flag.write_text("")
    from clusterjupyter.sweeps import Sweep

    sw = Sweep(sw.id)
    sw.retry()
    again = [sw.elements[i].job.record.native_id for i in (1, 3)]
    new_array = again[0].split("[")[0]
    assert new_array != array and again == [f"{new_array}[1]", f"{new_array}[3]"]
    assert sw.wait(300).done == 5, sw.summary()
    with capture_output() as cap:
        ok(sh, f"%cluster result {sw.id[:8]}")
    assert "5 of 5 completed" in cap.stdout
    assert sh.user_ns["sq"]["sq"].tolist() == [0, 1, 4, 9, 16]


@pytest.mark.pbs
def test_pbs_cancel_whole_sweep(pbs_profile):
    sh = new_shell()
    ok(sh, '%%cluster pbs --async --sweep "a in range(3)" --job sw\n'
           'import time\ntime.sleep(120)\nx = a')
    sw = sh.user_ns["sw"]
    wait_for(lambda: sw.counts().running >= 1, 240, "an element to start")
    counts = sw.cancel()                          # one qdel ID[] for the whole array
    assert counts.failed == 3 and counts.done == 0, sw.summary()
    assert {e.state for e in sw.elements} == {JobState.CANCELLED}


# -- one scenario, every batch scheduler --------------------------------------------------------
# What every scheduler must do alike runs once per scheduler (the parameter carries its marker,
# as in tests/test_scenarios.py); what only one of them can say is a small hook of its own.

def _sacct_says_timeout(array: str) -> None:
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", f"{array}_1"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "TIMEOUT" in acct, acct                # SLURM itself says so


def _slurm_says_timeout(sw, time_limit: str) -> None:
    _sacct_says_timeout(sw.elements[1].job.record.native_id.split("_")[0])


def _pbs_says_timeout(sw, time_limit: str) -> None:
    # the wrappers' array ARRAY[1] is SLURM's ARRAY_1: SLURM's accounting below them says so
    _sacct_says_timeout(sw.elements[1].job.record.native_id.split("[")[0])


def _qacct_says_h_rt(sw, time_limit: str) -> None:
    sge = ensure("sge")["sge"]
    array, task = sw.elements[1].job.record.native_id.split(".")
    env = {**os.environ, "SGE_ROOT": sge["sge_root"], "SGE_CELL": sge["sge_cell"]}
    acct = subprocess.run(["/usr/lib/gridengine/qacct", "-j", array, "-t", task],
                          capture_output=True, text=True, timeout=60, env=env).stdout
    h, m, sec = (int(x) for x in time_limit.split(":"))
    # Grid Engine itself says so: its qmaster ended task 2 (element 1) at its h_rt
    assert re.search(r"^failed\s+37\s*:\s*qmaster enforced h_rt", acct, re.M), acct
    assert re.search(rf"^category\s.*-l h_rt={h * 3600 + m * 60 + sec}\b", acct, re.M), acct


@dataclass(frozen=True)
class Batch:
    """One batch scheduler as the shared scenarios see it."""

    name: str                                      # its profile's name
    time_limit: str                                # a --time it enforces within a minute
    says_timeout: Callable[[Any, str], None]       # its own word on the element that hit it


BATCH = {"slurm": Batch("slurm", "0:00:20", _slurm_says_timeout),
         "sge": Batch("sge", "0:00:08", _qacct_says_h_rt),
         "pbs": Batch("pbs", "0:00:20", _pbs_says_timeout)}


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in BATCH])
def batch(request, cj_home, monkeypatch):
    """A profile named after the scheduler, on its real test cluster."""
    name = request.param
    if name == "sge":
        _sge_profile(cj_home, monkeypatch)
    else:
        info = ensure(name)[name]
        profile: dict = {"scheduler": name, "python": sys.executable, "resources": {"mem": "200M"}}
        if name == "slurm":
            profile["resources"].update(partition=info["partition"], time="10m")
        else:
            profile["scheduler_options"] = {"bin_dir": info["bin_dir"]}
        write_profiles(cj_home, {name: profile})
    yield BATCH[name]
    if name != "sge":                              # SLURM ids: the PBS wrappers run on it
        scancel_leftovers()


def test_element_over_its_time_limit_then_retry(batch, tmp_path):
    """The scheduler ends the element over its --time (SLURM and the PBS wrappers over it: 0–30 s
    after it, slurmctld looks every 30 s; Grid Engine: its h_rt); the others complete; the
    scheduler's own accounting says why; the retry gives the full result set."""
    sh = new_shell()
    flag, out = _sweep_until_flag(
        sh, tmp_path, f'{batch.name} --time {batch.time_limit} --sweep "a in range(3)"',
        "a == 1", "time.sleep(600)")
    assert "2 of 3 completed, 1 failed" in out, out
    assert "element 1 (a=1): timeout: " in out and "time limit" in out
    sw = sh.user_ns["sw"]
    assert [e.state for e in sw.elements] == [JobState.COMPLETED, JobState.TIMEOUT,
                                              JobState.COMPLETED], sw.summary()
    assert "time limit" in sw.summary()
    assert sh.user_ns["sq"]["sq"].tolist() == [0, 4]
    batch.says_timeout(sw, batch.time_limit)
    with capture_output() as cap:
        ok(sh, f"%cluster sweep {sw.id[:8]}")
    assert "time limit" in [ln for ln in cap.stdout.splitlines() if "timeout" in ln][0]
    _retry_gives(sw, flag, [0, 1, 4])



def test_cancel_whole_sweep(batch):
    """One cancel for the whole array: every element ends cancelled, none completes."""
    sh = new_shell()
    ok(sh, f'%%cluster {batch.name} --async --sweep "a in range(3)" --job sw\n'
           'import time\ntime.sleep(120)\nx = a')
    sw = sh.user_ns["sw"]
    counts = sw.cancel()
    assert counts.failed == 3 and counts.done == 0, sw.summary()
    assert {e.state for e in sw.elements} == {JobState.CANCELLED}


# -- Kubernetes: one Indexed Job ---------------------------------------------------------------
# No API server can run here. The sweep goes through the real magic and the official client to
# a local recorder answering like the API (tests/test_kubernetes.py); then each pod's command,
# as the generated manifest states it, is run here for real with the JOB_COMPLETION_INDEX
# Kubernetes would give it, in a private mount namespace (the pod's /run/clusterjupyter is a
# tmpfs): the element it picks runs the real runner on its real directory.

from test_kubernetes import NS, api_server, options  # noqa: E402,F401  (the recorder fixture)


def _k8s_list(recorder, items: list) -> None:
    recorder.answer("GET", f"/apis/batch/v1/namespaces/{NS}/jobs", 200,
                      {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {},
                       "items": items})


def _run_pod(job: dict, index: int, secret: bytes) -> subprocess.CompletedProcess:
    """Run the pod of completion index ``index`` of the Job ``job`` as Kubernetes would."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index),
           "CLUSTERJUPYTER_SECRET": secret.decode()}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    mount = 'mount -t tmpfs tmpfs /run && mkdir /run/clusterjupyter && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", *container["command"]],
                          cwd=container["workingDir"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_kubernetes_sweep_is_one_indexed_job(shell, cj_home, api_server,  # noqa: F811
                                             tmp_path):
    import base64

    from clusterjupyter.sweeps import Sweep

    opts = {**options(api_server.url), "python": sys.executable, "run_as_user": os.getuid(),
            "run_as_group": os.getgid()}
    write_profiles(cj_home, {"k8s": {"scheduler": "kubernetes", "workdir": str(tmp_path / "w"),
                                     "environment": "off", "scheduler_options": opts}})
    jobs_path = f"/apis/batch/v1/namespaces/{NS}/jobs"
    api_server.answer("POST", jobs_path, 201, "echo")
    api_server.answer("POST", f"/api/v1/namespaces/{NS}/secrets", 201, "echo")
    api_server.answer("GET", f"/api/v1/namespaces/{NS}/pods", 200,
                      {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})
    _k8s_list(api_server, [])
    flag, _ = _sweep_until_flag(
        shell, tmp_path, 'k8s --async --time 10m --max-running 2 --sweep "a in range(3)"',
        "a == 1", 'raise ValueError("one")', "pid = os.getpid()")
    sw = shell.user_ns["sw"]
    posts = [r for r in api_server.requests if r["method"] == "POST"]
    secret = base64.b64decode(posts[0]["body"]["data"]["secret"])
    [job] = [r["body"] for r in posts if r["path"] == jobs_path]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
    assert spec["backoffLimitPerIndex"] == 0 and "backoffLimit" not in spec
    assert spec["template"]["spec"]["activeDeadlineSeconds"] == 600     # per element
    assert "activeDeadlineSeconds" not in spec
    from kubernetes import client as k8s     # every field is one the official model knows

    api = k8s.ApiClient()
    assert api.sanitize_for_serialization(api._ApiClient__deserialize(job, "V1Job")) == job
    name = job["metadata"]["name"]
    assert [e.job.record.native_id for e in sw.elements] == [f"{name}[{i}]" for i in range(3)]
    # the job controller's part, played here: each index's pod, then the Job's status
    ran = [_run_pod(job, i, secret) for i in range(3)]
    assert ran[0].returncode == ran[2].returncode == 0, ran[0].stderr
    _k8s_list(api_server, [{**job, "status": {"completedIndexes": "0,2", "failedIndexes": "1",
                                              "conditions": [{"type": "Failed",
                                                              "status": "True",
                                                              "reason": "FailedIndexes"}]}}])
    counts = sw.wait(60)
    assert (counts.done, counts.failed) == (2, 1), sw.summary()
    assert isinstance(sw.elements[1].exception, ValueError)
    pids = [sw.elements[i].outputs()["pid"] for i in (0, 2)]
    assert os.getpid() not in pids and pids[0] != pids[1]
    # retry: a new Indexed Job of one completion, whose index 0 is element 1
    flag.write_text("")
    api_server.requests.clear()
    Sweep(sw.id).retry()
    [again] = [r["body"] for r in api_server.requests
               if r["method"] == "POST" and r["path"] == jobs_path]
    env = {e["name"]: e.get("value") for e in again["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert again["spec"]["completions"] == 1 and env["CJ_INDICES"] == "1"
    assert _run_pod(again, 0, secret).returncode == 0
    _k8s_list(api_server, [{**again, "status": {"completedIndexes": "0", "conditions": [
        {"type": "Complete", "status": "True"}]}}])
    sw = Sweep(sw.id)
    assert sw.wait(60).done == 3, sw.summary()
    assert sw.elements[1].job.record.native_id == f"{again['metadata']['name']}[1]"
    assert sw.results()["sq"]["sq"].tolist() == [0, 1, 4]
    # an index beyond the list (a Job that was changed by hand) runs nothing
    bad = _run_pod(again, 5, secret)
    assert bad.returncode == 71 and "no element for completion index 5" in bad.stderr
