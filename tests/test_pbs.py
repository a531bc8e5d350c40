"""PBS / Torque backend on real programs: the ``slurm-wlm-torque`` wrappers over the test SLURM.

The wrappers (``qsub``, ``qstat``, ``qdel``, ``qhold``, ``qrls``: Perl, by SchedMD) are written
for people who type PBS commands on a SLURM cluster; they are real programs by others, so the
backend is exercised end to end. They live in a directory of their own (they clash with Grid
Engine's ``qsub``), which the profile names with the ``bin_dir`` scheduler option: nothing's
``PATH`` changes. The scenarios every batch scheduler shares are in test_scenarios.py; the
parsing of Torque / PBS Pro output (recorded and verbatim-shaped) in test_schedulers.py.
"""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from clusterjupyter import api
from clusterjupyter.errors import JobFailedError
from clusterjupyter.schedulers.pbs import PBSScheduler
from clusterjupyter.transports import LocalTransport
from helpers import ensure, write_profiles
from shells import run

pytestmark = pytest.mark.pbs


@pytest.fixture(scope="module")
def pbs():
    return ensure("pbs")["pbs"]


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
    broken = {"scheduler": "pbs", "python": "/nonexistent/python3",
              "scheduler_options": {"bin_dir": pbs["bin_dir"]}}
    # the environment guard finds the missing interpreter before anything is submitted ...
    write_profiles(cj_home, {"broken": broken})
    r = run(shell, "%%cluster broken\nv = 1")
    assert isinstance(r.error_in_exec, UsageError), r.error_in_exec
    assert "/nonexistent/python3" in str(r.error_in_exec) and api.list_jobs() == []
    # ... and without the guard the job runs and ends without an exit file, which is said
    write_profiles(cj_home, {"broken": {**broken, "environment": "off"}})
    r = run(shell, "%%cluster broken\nv = 1")
    err = r.error_in_exec
    assert isinstance(err, JobFailedError) and err.state == "failed"
    assert "without an exit file" in str(err) and "/nonexistent/python3" in str(err)
