"""Grid Engine backend on the project's real one-node Grid Engine 8.1.9 (scripts/testclusters.sh).

A real IPython shell runs ``%%cluster`` cells; Grid Engine runs them. The profile calls the
binaries in ``/usr/lib/gridengine`` directly (``bin_dir``), which refuse to work without
``SGE_ROOT``: the ``command_env`` scheduler option supplies it, as a login environment that
lacks Grid Engine's settings would need. The scenarios every batch scheduler shares are in
test_scenarios.py; accounting records and state letters in test_schedulers.py.
"""

from __future__ import annotations

import pytest

from clusterjupyter.states import JobState
from helpers import ensure, last_job, scheduler_env, write_profiles
from shells import ok, run

pytestmark = pytest.mark.sge

SGE_BIN = "/usr/lib/gridengine"


@pytest.fixture(scope="module")
def sge():
    return ensure("sge")["sge"]


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


# -- what only Grid Engine does (the shared scenarios are in test_scenarios.py) ------------------

def test_cpus_become_slots_of_the_parallel_environment(shell, profile):
    value = ok(shell, f"%%cluster {profile} --cpus 2\nimport os\n"
                      "os.environ.get('NSLOTS')")
    assert value == "2"
    rec = last_job()
    assert rec.state is JobState.COMPLETED and scheduler_env(rec)["JOB_ID"] == rec.native_id


def test_without_sge_root_the_commands_fail_clearly(shell, sge, cj_home, monkeypatch):
    monkeypatch.delenv("SGE_ROOT", raising=False)
    options = {k: v for k, v in sge_options(sge).items() if k != "command_env"}
    write_profiles(cj_home, {"bare": {"scheduler": "sge", "scheduler_options": options}})
    r = run(shell, "%%cluster bare\nv = 1")
    assert "SGE_ROOT" in str(r.error_in_exec) and "v" not in shell.user_ns
    assert last_job().state is JobState.FAILED and "submission failed" in last_job().reason
