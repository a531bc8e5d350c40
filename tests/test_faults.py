"""Fault injection: the plan (pure) and the fault matrix on the real sshd.

The matrix runs many cells on the local scheduler over the test sshd with every fault kind
mixed in, and checks each: no lost result, no job run or started twice, the final state the
faults call for, every error one clear line. The matrix goes to test-artifacts/.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clusterjupyter.errors import ProfileError
from clusterjupyter.faults import KINDS, FaultPlan
from clusterjupyter.profiles import Profile

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


# -- the plan (no services) -------------------------------------------------------------------

def test_plan_is_seeded_and_only_draws_its_kinds():
    a = FaultPlan.parse({"rate": 0.5, "seed": 3, "kinds": ["drop_before", "hang"]})
    b = FaultPlan.parse({"rate": 0.5, "seed": 3, "kinds": ["drop_before", "hang"]})
    draws = [a.draw("op", KINDS) for _ in range(200)]
    assert draws == [b.draw("op", KINDS) for _ in range(200)]
    assert set(draws) == {None, "drop_before", "hang"}
    assert a.counts()["drop_before"] + a.counts()["hang"] == sum(d is not None for d in draws)
    assert FaultPlan.parse({"rate": 0.0}).draw("op", KINDS) is None
    assert FaultPlan.parse({"rate": 1.0, "kinds": ["slow"]}).draw("op", ["hang"]) is None


@pytest.mark.parametrize("value, words", [
    ({"rate": 2}, "rate must be a number from 0 to 1"),
    ({"rate": 0.1, "kinds": ["drop"]}, "kinds must be a list of: drop_before, drop_during"),
    ({"rate": 0.1, "sed": 1}, "unknown key 'sed'; valid keys: rate, seed, kinds, hang, slow"),
    ({"rate": 0.1, "hang": -1}, "hang must be seconds"),
    ("often", "must be a table"),
])
def test_bad_fault_settings_name_the_valid_ones(value, words):
    with pytest.raises(ProfileError, match=words) as e:
        Profile.from_dict("flaky", {"faults": value})
    assert "profile 'flaky', field 'faults'" in str(e.value)


def test_profile_keeps_its_fault_plan():
    p = Profile.from_dict("flaky", {"faults": {"rate": 0.1, "seed": 1, "kinds": ["vanish"]}})
    assert FaultPlan.parse(p.faults).kinds == ("vanish",)


# -- the matrix on the real sshd --------------------------------------------------------------

@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    from helpers import close_module_env, ensure, make_env, new_module_shell, ssh_profile

    ssh = ensure("sshd")["ssh"]
    remote = tmp_path_factory.mktemp("faults-remote")
    # (seed 5 at this rate: every kind meets the spawn and submit streams within 200 cells)
    faults = {"rate": float(os.environ.get("CJ_FAULT_RATE", "0.04")),
              "seed": int(os.environ.get("CJ_FAULT_SEED", "5")), "hang": 0.2, "slow": 0.2}
    if os.environ.get("CJ_FAULT_KINDS"):          # e.g. "drop_during,drop_after" to explore
        faults["kinds"] = os.environ["CJ_FAULT_KINDS"].split(",")
    env, mp = make_env(tmp_path_factory, "faults",
                       {"flaky": ssh_profile(ssh, remote / "work", faults=faults)})
    ran = remote / "ran"
    ran.mkdir()
    yield new_module_shell(), ran
    close_module_env(mp)


@pytest.mark.ssh
def test_fault_matrix(flaky):
    import faultmatrix
    from clusterjupyter.backends import backend_for

    sh, ran = flaky
    n = int(os.environ.get("CJ_FAULT_CELLS", "200"))
    backend = backend_for("flaky")
    backend.transport.inner.backoff = 0.02        # reconnect promptly: many drops are coming
    cells = [faultmatrix.run_cell(sh, "flaky", i, ran) for i in range(n)]
    md = faultmatrix.write_artifacts(cells, ARTIFACTS)
    print("\n" + md.read_text())
    met = {k for c in cells for k in c.kinds}
    wanted = set(os.environ.get("CJ_FAULT_KINDS", ",".join(KINDS)).split(","))
    assert met == wanted, f"kinds never injected: {wanted - met}"
    bad = [(c.index, c.faults, c.problems) for c in cells if c.problems]
    assert bad == []
    assert sum(c.outcome == "completed" for c in cells) > n // 2


# -- a lost submission answer on the real SLURM, over SSH ---------------------------------------

@pytest.fixture(scope="module")
def slurm_flaky(tmp_path_factory):
    from helpers import (close_module_env, ensure, make_env, new_module_shell,
                         scancel_leftovers, ssh_profile)

    clusters = ensure("slurm", "sshd")
    ssh, slurm = clusters["ssh"], clusters["slurm"]
    remote = tmp_path_factory.mktemp("faults-slurm")
    res = {"partition": slurm["partition"], "time": "10m", "mem": "300M"}
    env, mp = make_env(tmp_path_factory, "faults-slurm", {"lossy": ssh_profile(
        ssh, remote / "work", scheduler="slurm", resources=res,
        faults={"rate": 1.0, "seed": 1, "kinds": ["lost_answer"]})})
    yield new_module_shell()
    scancel_leftovers()
    close_module_env(mp)


@pytest.mark.slurm
@pytest.mark.ssh
def test_sbatch_whose_answer_is_lost_submits_one_job(slurm_flaky):
    """Every submission's answer is lost after sbatch ran (the connection is cut): asking
    again must find the same SLURM job, never submit a second one."""
    import uuid

    from clusterjupyter.backends import backend_for
    from shells import ok

    sh = slurm_flaky
    for i in range(3):
        name = f"cj-lost-{uuid.uuid4().hex[:8]}"
        before = backend_for("lossy").transport.connects
        job_id, value = ok(sh, f"%%cluster lossy --name {name}\nimport os\n"
                               f"(os.environ['SLURM_JOB_ID'], {i})")
        out = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}",
                              "--format=%i"], capture_output=True, text=True, check=True)
        assert value == i and out.stdout.split() == [job_id]   # one job, the one that ran
        assert backend_for("lossy").transport.connects > before   # the answer was really lost
    assert backend_for("lossy").transport.plan.counts()["lost_answer"] == 3
