"""PBS / Torque backend on real programs: the ``slurm-wlm-torque`` wrappers over the test SLURM.

The wrappers (``qsub``, ``qstat``, ``qdel``, ``qhold``, ``qrls``: Perl, by SchedMD) are written
for people who type PBS commands on a SLURM cluster; they are real programs by others, so the
backend is exercised end to end: a real IPython shell runs ``%%cluster`` cells, SLURM runs the
jobs. They live in a directory of their own (they clash with Grid Engine's ``qsub``), which
the profile names with the ``bin_dir`` scheduler option: nothing's ``PATH`` changes.

The helpers at the top are reused by ``test_sge.py``. Parsing of real Torque / PBS Pro output
that the wrappers cannot produce (``exit_status``, wrapped lines, ``qstat -x`` XML) is tested on
verbatim-shaped samples at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

from clusterjupyter.backends import backend_for
from clusterjupyter.errors import JobFailedError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.schedulers.pbs import PBSScheduler
from clusterjupyter.states import JobState
from clusterjupyter.transports import LocalTransport

from helpers import (cancel_leftovers, check_golden, dry_run, ensure, last_job, normalized,
                     scheduler_env, wait_started, write_profiles)
from shells import ok, run


pytestmark = pytest.mark.pbs


@pytest.fixture
def cleanup():
    """Jobs appended here are cancelled after the test if still active."""
    jobs: list = []
    yield jobs
    cancel_leftovers(jobs)


@pytest.fixture(scope="module")
def pbs():
    return ensure("pbs")["pbs"]


@pytest.fixture
def profile(pbs, cj_home):
    """A profile "pbs" using the wrappers through ``bin_dir``; the kernel's PATH is unchanged."""
    # small jobs (the node's 4000 MB are shared with the other real-service tests)
    write_profiles(cj_home, {"pbs": {"scheduler": "pbs", "resources": {"mem": "300M"},
                                     "scheduler_options": {"bin_dir": pbs["bin_dir"]}}})
    assert pbs["bin_dir"] not in os.environ.get("PATH", "")
    return "pbs"


def qcmd(pbs: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run one of the wrappers from outside clusterjupyter."""
    return subprocess.run([os.path.join(pbs["bin_dir"], name), *args], capture_output=True,
                          text=True, timeout=60)


# -- kernel-level tests on the real wrappers ----------------------------------------------------

def test_values_come_back_from_a_pbs_job(shell, profile):
    ok(shell, "base = 20")
    value = ok(shell, f"%%cluster {profile}\nimport os\nanswer = base + 22\n"
                      "where = os.environ.get('SLURM_JOB_ID')\nanswer * 2")
    assert value == 84 and shell.user_ns["answer"] == 42
    rec = last_job()
    assert rec.state is JobState.COMPLETED and rec.scheduler == "pbs"
    # it ran under the scheduler: the wrappers' qsub went to SLURM, whose job id qsub printed
    assert shell.user_ns["where"] == rec.native_id == scheduler_env(rec)["SLURM_JOB_ID"]
    # the output went where the script said, not to NAME.oID in the current directory
    assert os.path.exists(JobPaths.from_dir(rec.job_dir).scheduler_log)
    assert not list(Path.cwd().glob("cell-*.o*"))


def test_exception_comes_back_with_its_type(shell, profile):
    ok(shell, "class Bad(RuntimeError):\n    pass")
    r = run(shell, f"%%cluster {profile}\nx = 5\nraise Bad(f'no {{x}}')")
    assert isinstance(r.error_in_exec, shell.user_ns["Bad"]) and str(r.error_in_exec) == "no 5"
    assert shell.user_ns["x"] == 5 and last_job().state is JobState.FAILED


def test_scripts_match_golden_files(shell, profile, cj_home):
    text = dry_run(shell, f"{profile} --time 1:30:00 --cpus 2 --mem 3G --nodes 1 "
                          "--partition debug --account physics --gpus 1 --constraint bigmem "
                          "--name full-options --directive '-m n'")
    root = backend_for(profile).root
    check_golden("pbs_full.sh", normalized(text, f"{root}/jobs/{'0' * 32}", cj_home))
    # the script a real job was submitted with
    ok(shell, f"%%cluster {profile} --time 5 --cpus 1 --mem 300M --name golden\nv = 1")
    rec = last_job()
    script = open(JobPaths.from_dir(rec.job_dir).script).read()
    check_golden("pbs_job.sh", normalized(script, rec.job_dir, cj_home))
    assert rec.options == {"time": 300, "cpus": 1, "mem": 300}


def test_job_name_cannot_inject(shell, profile, pbs, tmp_path):
    marker = tmp_path / "pwned"
    name = f'x";touch {marker};`touch {marker}`$(touch {marker})'
    ok(shell, f"%%cluster {profile} --name '{name}'\nv = 1")
    rec = last_job()
    script = open(JobPaths.from_dir(rec.job_dir).script).read()
    assert "$(" not in script and "`" not in script and ";touch" not in script
    assert not marker.exists()
    assert rec.state is JobState.COMPLETED and rec.name == name
    # what the scheduler calls it: a plain word, first letter alphabetic, at most 15 characters
    out = qcmd(pbs, "qstat", "-f", rec.native_id).stdout
    assert re.search(r"Job_Name = x__touch__tmp_p\n", out), out


def test_cancel_from_the_magic_and_with_qdel(shell, profile, pbs, cleanup):
    job = ok(shell, f"%%cluster {profile} --async\nimport time\ntime.sleep(120)\nnever = 1")
    cleanup.append(job)
    wait_started(job)
    with capture_output() as cap:
        ok(shell, f"%cluster cancel {job.id[:8]}")
    assert "cancelled" in cap.stdout and job.state is JobState.CANCELLED
    # from outside, as a user at a terminal would
    job = ok(shell, f"%%cluster {profile} --async\nimport time\ntime.sleep(120)\nnever = 1")
    cleanup.append(job)
    wait_started(job)
    assert qcmd(pbs, "qdel", job.native_id).returncode == 0
    assert job.wait(60) is JobState.CANCELLED
    assert "never" not in shell.user_ns
    ok(shell, "pass")
    assert "never" not in shell.user_ns


def queue_hold_release(shell, profile: str, cleanup: list, *, blocker_seconds: int,
                       release_timeout: float, check_blocker=None, check_held=None) -> None:
    """The queue lists a running job; a job cancelled before it ran ends cancelled; a held job
    stays queued with CPUs free and runs once released. Other tests may share the one 2-CPU
    node: the held job asks for both CPUs, so the running one-CPU blocker keeps it waiting
    whatever else runs. (Shared with test_sge.py.)"""
    sched = backend_for(profile).scheduler
    blocker = ok(shell, f"%%cluster {profile} --async --name blocker\n"
                        f"import time\ntime.sleep({blocker_seconds})")
    cleanup.append(blocker)
    wait_started(blocker)
    entries = {q.native_id: q for q in sched.queue()}
    assert entries[blocker.native_id].state is JobState.RUNNING
    assert entries[blocker.native_id].name == "blocker"
    if check_blocker is not None:
        check_blocker(entries[blocker.native_id])
    with capture_output() as cap:
        ok(shell, f"%cluster queue {profile}")
    assert blocker.native_id in cap.stdout and "running" in cap.stdout
    waiting = ok(shell, f"%%cluster {profile} --async --cpus 2 --name waiting\n"
                        "after = 'released'")
    cleanup.append(waiting)
    sched.hold(waiting.native_id)
    # a job cancelled before it ever ran ends cancelled too (no exit file, nothing ran)
    doomed = ok(shell, f"%%cluster {profile} --async --cpus 2 --name doomed\nnever = 1")
    cleanup.append(doomed)
    assert doomed.state is JobState.PENDING
    with capture_output():
        ok(shell, f"%cluster cancel {doomed.id[:8]}")
    assert doomed.state is JobState.CANCELLED and "never" not in shell.user_ns
    if check_held is not None:
        check_held(sched.status([waiting.native_id], [waiting.id])[waiting.native_id])
    blocker.cancel()
    time.sleep(3)     # a few scheduling intervals: free CPUs, yet it must not start
    assert waiting.state is JobState.PENDING
    assert sched.status([waiting.native_id], [waiting.id])[waiting.native_id].state \
        is JobState.PENDING
    sched.release(waiting.native_id)
    assert waiting.wait(release_timeout) is JobState.COMPLETED
    ok(shell, "pass")
    assert shell.user_ns["after"] == "released"


def test_queue_lists_the_running_job_and_hold_release(shell, profile, cleanup):
    queue_hold_release(shell, profile, cleanup, blocker_seconds=180, release_timeout=300)


def test_time_limit_ends_the_job_as_timeout(shell, profile):
    """SLURM under the wrappers: limits are whole minutes, checked every 30 s (60–90 s)."""
    r = run(shell, f"%%cluster {profile} --time 0:00:20\nimport time\ntime.sleep(600)")
    assert isinstance(r.error_in_exec, JobFailedError) and r.error_in_exec.state == "timeout"
    rec = last_job()
    assert rec.state is JobState.TIMEOUT and "walltime" in rec.reason
    assert rec.finished - rec.started < 120


def test_unsafe_work_directory_is_refused(shell, pbs, cj_home, tmp_path):
    write_profiles(cj_home, {"odd": {"scheduler": "pbs", "workdir": str(tmp_path / "a b;c"),
                                     "scheduler_options": {"bin_dir": pbs["bin_dir"]}}})
    r = run(shell, "%%cluster odd\nv = 1")
    assert "workdir" in str(r.error_in_exec) and "v" not in shell.user_ns


def test_qstat_x_is_dropped_once_the_wrappers_refuse_it(pbs):
    sched = PBSScheduler(LocalTransport(), {"bin_dir": pbs["bin_dir"]})
    assert sched.status(["999999"], ["x"]) == {}
    assert sched._history is False       # the wrappers' qstat has no -x


def test_a_job_whose_runner_cannot_start_says_why(shell, pbs, cj_home):
    """The wrappers report every finished job as C without an exit status: a job that ended
    without an exit file is reported as such (not left pending), with the scheduler log."""
    write_profiles(cj_home, {"broken": {"scheduler": "pbs", "python": "/nonexistent/python3",
                                        "scheduler_options": {"bin_dir": pbs["bin_dir"]}}})
    r = run(shell, "%%cluster broken\nv = 1")
    err = r.error_in_exec
    assert isinstance(err, JobFailedError) and err.state == "failed"
    assert "without an exit file" in str(err) and "/nonexistent/python3" in str(err)
