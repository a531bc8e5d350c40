"""Per-profile metrics: counted by the monitor and the submit path into the journal, read by
``%cluster metrics`` (real shell), the server route (real Jupyter server) and the health check."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from IPython.utils.capture import capture_output
from tornado.httpclient import HTTPClientError

from clusterjupyter import api, paths
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.journal import JobRecord
from clusterjupyter.metrics import collect, percentiles
from clusterjupyter.states import JobState

from shells import ok, run

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"clusterjupyter.server": True}}}


def test_percentiles_nearest_rank():
    assert percentiles([]) == {}
    p = percentiles([float(v) for v in range(1, 101)])
    assert (p["p50"], p["p90"], p["p99"], p["max"]) == (50.0, 90.0, 99.0, 100.0)
    assert percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}


def test_metrics_of_real_jobs_are_shared_with_other_processes(shell):
    ok(shell, "%%cluster\nimport time\ntime.sleep(1.5)\nx = 1")       # long enough for a query
    run(shell, "%%cluster\nraise ValueError('no')")
    with capture_output() as cap:
        ok(shell, "%cluster metrics")
    assert "local: completed 1, failed 1 (errors 1)" in cap.stdout
    assert "submissions 2" in cap.stdout and "queue wait" in cap.stdout
    # another process (the server, the command line) reads the same figures from the journal
    out = subprocess.run([sys.executable, "-c", "import json\nfrom clusterjupyter import api\n"
                          "print(json.dumps(api.metrics()))"], capture_output=True, text=True,
                         check=True).stdout
    local = json.loads(out)["local"]
    assert local["states"] == {"completed": 1, "failed": 1} and local["errors"] == 1
    assert local["counters"]["submissions"] == 2
    assert local["counters"]["scheduler_commands"] >= 1     # the monitor's `ps` queries
    assert local["counters"]["reconnects"] == 0
    assert local["timed_jobs"] == 2 and local["run_time"]["max"] >= 1.5
    r = run(shell, "%cluster metrics nowhere")
    assert "no metrics for profile 'nowhere'" in str(r.error_in_exec)


def test_health_check_reports_versions_and_error_counts(shell):
    from clusterjupyter import __version__
    from clusterjupyter.widgets import check_profile

    run(shell, "%%cluster\nraise ValueError('no')")
    answer = check_profile("local")
    assert answer["ok"] and answer["versions"]["clusterjupyter"] == __version__
    assert answer["errors"] == 1 and answer["metrics"]["states"] == {"failed": 1}


def add_job(state: JobState, profile: str, wait: float, run_for: float) -> JobRecord:
    job_id = uuid.uuid4().hex
    t = time.time() - 100
    rec = JobRecord(id=job_id, name="j", profile=profile, scheduler="slurm", state=state,
                    submitted=t, started=t + wait, finished=t + wait + run_for, cell="x = 1",
                    job_dir=JobPaths(paths.local_work_root(), job_id).dir)
    api.journal().add(rec)
    return rec


async def test_metrics_route(jp_fetch, cj_home):
    for i in range(10):
        add_job(JobState.COMPLETED, "hpc", wait=float(i), run_for=10.0 * i)
    add_job(JobState.TIMEOUT, "hpc", wait=1.0, run_for=60.0)
    api.journal().count("hpc", {"scheduler_commands": 7, "reconnects": 2})
    response = await jp_fetch("clusterjupyter", "metrics")
    hpc = json.loads(response.body)["profiles"]["hpc"]
    assert hpc["states"] == {"completed": 10, "timeout": 1} and hpc["errors"] == 1
    assert hpc["counters"] == {"submissions": 0, "submissions_retried": 0,
                               "reconnects": 2, "scheduler_commands": 7}
    assert hpc["queue_wait"]["max"] == pytest.approx(9.0)
    assert hpc["run_time"]["p50"] == pytest.approx(50.0)   # 0..90 by 10, and 60
    assert collect()["hpc"].errors == 1
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("clusterjupyter", "metrics", headers={"Authorization": ""})
    assert info.value.code in (401, 403)


@pytest.mark.ssh
@pytest.mark.parametrize("extra", [{}, {"faults": {"rate": 0.0}}], ids=["plain", "fault-wrapped"])
def test_reconnects_and_retried_submissions_are_counted_over_ssh(shell, cj_home, tmp_path,
                                                                 extra):
    from helpers import close_shell_and_backends, ensure, ssh_profile, write_profiles

    from clusterjupyter.backends import backend_for

    ssh = ensure("sshd")["ssh"]
    write_profiles(cj_home, {"sshlocal": ssh_profile(ssh, tmp_path / "work", **extra)})
    try:
        ok(shell, "%%cluster sshlocal\nx = 1")
        backend = backend_for("sshlocal")
        backend.transport.break_connection()             # a real drop between cells
        ok(shell, "%%cluster sshlocal\ny = 2")
        submit = backend.scheduler.submit

        def dropped_then_submit(spec):
            backend.transport.break_connection()          # a real drop as the submit starts
            return submit(spec)

        backend.scheduler.submit = dropped_then_submit    # type: ignore[method-assign]
        ok(shell, "%%cluster sshlocal\nz = 3")
        assert shell.user_ns["z"] == 3
        counters = collect()["sshlocal"].counters
        assert counters["submissions"] == 3 and counters["submissions_retried"] == 1
        assert counters["reconnects"] == 2
    finally:
        close_shell_and_backends()
