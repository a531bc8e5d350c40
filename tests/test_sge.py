"""Grid Engine backend on the project's real one-node Grid Engine 8.1.9 (scripts/testclusters.sh).

A real IPython shell runs ``%%cluster`` cells; Grid Engine runs them. The profile calls the
binaries in ``/usr/lib/gridengine`` directly (``bin_dir``), which refuse to work without
``SGE_ROOT``: the ``command_env`` scheduler option supplies it, as a login environment that
lacks Grid Engine's settings would need.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from IPython.utils.capture import capture_output

from clusterjupyter.backends import backend_for
from clusterjupyter.errors import JobFailedError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.states import JobState

from helpers import (cancel_leftovers, check_golden, dry_run, ensure, last_job, normalized,
                     scheduler_env, wait_for, wait_started, write_profiles)
from shells import ok, run
from test_pbs import queue_hold_release

pytestmark = pytest.mark.sge

SGE_BIN = "/usr/lib/gridengine"


@pytest.fixture(scope="module")
def sge():
    return ensure("sge")["sge"]


@pytest.fixture
def cleanup():
    """Jobs appended here are cancelled after the test if still active."""
    jobs: list = []
    yield jobs
    cancel_leftovers(jobs)


def sge_options(sge: dict) -> dict:
    return {"bin_dir": SGE_BIN,
            "command_env": {"SGE_ROOT": sge["sge_root"], "SGE_CELL": sge["sge_cell"]},
            "pe": sge["pe"]}


@pytest.fixture
def profile(sge, cj_home, monkeypatch):
    # the kernel itself has no Grid Engine environment: only command_env provides it
    monkeypatch.delenv("SGE_ROOT", raising=False)
    monkeypatch.delenv("SGE_CELL", raising=False)
    write_profiles(cj_home, {"sge": {"scheduler": "sge", "scheduler_options": sge_options(sge),
                                     "resources": {"partition": sge["queue"]}}})
    return "sge"


def qcmd(sge: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    """A Grid Engine command run from outside clusterjupyter."""
    env = {**os.environ, "SGE_ROOT": sge["sge_root"], "SGE_CELL": sge["sge_cell"]}
    return subprocess.run([os.path.join(SGE_BIN, name), *args], capture_output=True, text=True,
                          timeout=60, env=env)


# -- kernel-level tests on the real Grid Engine -------------------------------------------------

def test_values_come_back_from_a_grid_engine_job(shell, profile):
    ok(shell, "base = 20")
    value = ok(shell, f"%%cluster {profile} --cpus 2\nimport os\nanswer = base + 22\n"
                      "where = os.environ.get('JOB_ID')\nslots = os.environ.get('NSLOTS')\n"
                      "answer * 2")
    assert value == 84 and shell.user_ns["answer"] == 42
    rec = last_job()
    assert rec.state is JobState.COMPLETED and rec.scheduler == "sge"
    # it ran under Grid Engine, as the job qsub announced, with the slots of the smp PE
    assert shell.user_ns["where"] == rec.native_id == scheduler_env(rec)["JOB_ID"]
    assert shell.user_ns["slots"] == "2"


def test_exception_comes_back_with_its_type(shell, profile):
    r = run(shell, f"%%cluster {profile}\nimport json\njson.loads('{{not json')")
    assert isinstance(r.error_in_exec, ValueError)
    assert type(r.error_in_exec).__name__ == "JSONDecodeError"
    assert last_job().state is JobState.FAILED


def test_scripts_match_golden_files(shell, profile, cj_home):
    text = dry_run(shell, f"{profile} --time 1:30:00 --cpus 4 --mem 6G --partition all.q "
                          "--account physics --gpus 1 --name full-options "
                          "--directive '-l scratch=10G'")
    root = backend_for(profile).root
    check_golden("sge_full.sh", normalized(text, f"{root}/jobs/{'0' * 32}", cj_home))
    ok(shell, f"%%cluster {profile} --time 5 --cpus 2 --mem 1G --name golden\nv = 1")
    rec = last_job()
    script = open(JobPaths.from_dir(rec.job_dir).script).read()
    check_golden("sge_job.sh", normalized(script, rec.job_dir, cj_home))


def test_job_name_cannot_inject(shell, profile, sge, tmp_path):
    marker = tmp_path / "pwned"
    name = f'x";touch {marker};`touch {marker}`$(touch {marker})'
    ok(shell, f"%%cluster {profile} --name '{name}'\nv = 1")
    rec = last_job()
    script = open(JobPaths.from_dir(rec.job_dir).script).read()
    assert "$(" not in script and "`" not in script and ";touch" not in script
    assert not marker.exists() and rec.state is JobState.COMPLETED and rec.name == name
    # the name Grid Engine knows it by (accounting is written a moment after the job ends)
    wait_for(lambda: qcmd(sge, "qacct", "-j", rec.native_id).returncode == 0, 30, "qacct")
    jobname = [line for line in qcmd(sge, "qacct", "-j", rec.native_id).stdout.splitlines()
               if line.startswith("jobname")]
    assert jobname[0].split()[1].startswith("x__touch__tmp_")


def test_cancel_from_the_magic_and_with_qdel(shell, profile, sge, cleanup):
    job = ok(shell, f"%%cluster {profile} --async\nimport time\ntime.sleep(120)\nnever = 1")
    cleanup.append(job)
    wait_started(job)
    with capture_output() as cap:
        ok(shell, f"%cluster cancel {job.id[:8]}")
    assert "cancelled" in cap.stdout and job.state is JobState.CANCELLED
    # from outside: Grid Engine's qdel kills with SIGKILL, the runner cannot say anything;
    # accounting (qacct) tells the backend how the job ended
    job = ok(shell, f"%%cluster {profile} --async\nimport time\ntime.sleep(120)\nnever = 1")
    cleanup.append(job)
    wait_started(job)
    assert qcmd(sge, "qdel", job.native_id).returncode == 0
    assert job.wait(60) is JobState.CANCELLED
    assert "qdel" in job.record.reason
    ok(shell, "pass")
    assert "never" not in shell.user_ns


def test_queue_lists_the_running_job_and_hold_release(shell, profile, cleanup):
    def on_all_q(entry) -> None:
        assert entry.partition == "all.q"

    def held(st) -> None:
        assert st.state is JobState.PENDING and st.native == "hqw" and "held" in st.reason

    queue_hold_release(shell, profile, cleanup, blocker_seconds=120, release_timeout=60,
                       check_blocker=on_all_q, check_held=held)


def test_time_limit_ends_the_job_as_timeout(shell, profile):
    t0 = time.time()
    r = run(shell, f"%%cluster {profile} --time 0:00:05\nimport time\ntime.sleep(600)")
    assert isinstance(r.error_in_exec, JobFailedError) and r.error_in_exec.state == "timeout"
    assert last_job().state is JobState.TIMEOUT and "h_rt" in last_job().reason
    assert time.time() - t0 < 60


def test_without_sge_root_the_commands_fail_clearly(shell, sge, cj_home, monkeypatch):
    monkeypatch.delenv("SGE_ROOT", raising=False)
    options = {k: v for k, v in sge_options(sge).items() if k != "command_env"}
    write_profiles(cj_home, {"bare": {"scheduler": "sge", "scheduler_options": options}})
    r = run(shell, "%%cluster bare\nv = 1")
    assert "SGE_ROOT" in str(r.error_in_exec) and "v" not in shell.user_ns
    assert last_job().state is JobState.FAILED and "submission failed" in last_job().reason
