"""SLURM scheduler: cells on the project's real one-node SLURM, from the login node (local
transport) and over SSH (scripts/testclusters.sh). The scenarios every batch scheduler shares
are in test_scenarios.py; golden scripts, tables and parsers on recorded output in
test_schedulers.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from clusterjupyter import api
from clusterjupyter.errors import JobCancelledError, JobFailedError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.schedulers.slurm import job_name
from clusterjupyter.states import JobState
from helpers import (check_golden, close_module_env, ensure, last_job, make_env,
                     new_module_shell, scancel_leftovers, ssh_profile, started_doc,
                     through_sshd_restart, wait_for)
from shells import ok, run



# -- the real cluster ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clusters():
    return ensure("slurm", "sshd")


@pytest.fixture(scope="module")
def env(tmp_path_factory, clusters):
    ssh, slurm = clusters["ssh"], clusters["slurm"]
    base = tmp_path_factory.mktemp("slurm-work")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    slow = bin_dir / "slow-sbatch"
    slow.write_text("#!/bin/sh\nsleep 1.5\nexec sbatch \"$@\"\n")
    no_acct = bin_dir / "sacct-disabled"
    no_acct.write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\n"
                       "exit 1\n")
    for f in (slow, no_acct):
        f.chmod(0o755)
    # small, time-limited jobs: the backfill scheduler can start them beside the slow one
    res = {"partition": slurm["partition"], "time": "10m", "mem": "300M"}
    profiles = {
        "slurm": {"scheduler": "slurm", "python": sys.executable,
                  "workdir": str(base / "local"), "resources": res},
        "sshslurm": ssh_profile(ssh, base / "ssh", scheduler="slurm", resources=res),
        "slowsubmit": ssh_profile(ssh, base / "slow", scheduler="slurm", resources=res,
                                  scheduler_options={"sbatch": str(slow)}),
        "noacct": {"scheduler": "slurm", "python": sys.executable,
                   "workdir": str(base / "noacct"), "resources": res,
                   "scheduler_options": {"sacct": str(no_acct)}},
    }
    e, mp = make_env(tmp_path_factory, "slurm", profiles)
    e.work = base  # type: ignore[attr-defined]
    yield e
    scancel_leftovers()
    close_module_env(mp)


@pytest.fixture(scope="module")
def sh(env):
    shell = new_module_shell()
    yield shell


def scontrol(native_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", "-o", native_id], capture_output=True,
                          text=True, check=True).stdout


def count_jobs(name: str) -> int:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}",
                          "--format=%i"], capture_output=True, text=True, check=True).stdout
    return len(out.split())



@pytest.mark.slurm
def test_cell_on_the_login_node_sees_its_slurm_job(sh, env):
    ok(sh, "x = 41")
    with capture_output() as cap:
        ok(sh, "%cluster script slurm --time 5 --mem 500M --cpus 1")
    for line in ("#SBATCH --time=00:05:00", "#SBATCH --mem=500M", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --partition=debug"):
        assert line in cap.stdout
    value = ok(sh, "%%cluster slurm --time 5 --mem 500M --cpus 1\nimport os\n"
                   "jid = os.environ['SLURM_JOB_ID']\ncpt = os.environ.get('SLURM_CPUS_PER_TASK')\n"
                   "v = x + 1\nv")
    rec = last_job()
    assert value == 42 and rec.state is JobState.COMPLETED
    assert sh.user_ns["jid"] == rec.native_id and sh.user_ns["cpt"] == "1"
    assert started_doc(rec)["env"]["SLURM_JOB_ID"] == rec.native_id
    info = scontrol(rec.native_id)
    assert "TimeLimit=00:05:00" in info and "MinMemoryNode=500M" in info
    assert re.search(r"\bNumCPUs=1\b", info) and "Partition=debug" in info
    assert f"StdOut={JobPaths.from_dir(rec.job_dir).scheduler_log}" in info


@pytest.mark.slurm
@pytest.mark.ssh
def test_cell_over_ssh_sees_its_slurm_job(sh, env):
    ok(sh, "base = 10")
    value = ok(sh, "%%cluster sshslurm --time 2 --mem 300M\nimport os\n"
                   "jid = os.environ['SLURM_JOB_ID']\n"
                   "via = os.environ.get('SSH_CONNECTION', '')\nbase * 3")
    rec = last_job()
    assert value == 30 and sh.user_ns["jid"] == rec.native_id
    assert sh.user_ns["via"]            # sbatch ran in the SSH session, its job inherited it
    info = scontrol(rec.native_id)
    assert "TimeLimit=00:02:00" in info and "MinMemoryNode=300M" in info
    r = run(sh, "%%cluster sshslurm\nraise LookupError('not here')")
    assert isinstance(r.error_in_exec, LookupError) and str(r.error_in_exec) == "not here"


@pytest.mark.slurm
@pytest.mark.ssh
def test_golden_script_through_the_magic(sh, env):
    with capture_output() as cap:
        ok(sh, "%cluster script sshslurm --time 1:30:00 --mem 2G --cpus 2 --name golden")
    prof = env.profiles["sshslurm"]
    where = f"{prof['user']}@{prof['host']}:{prof['port']}"
    text = cap.stdout.replace(str(env.work), "<WORK>").replace(sys.executable, "<PYTHON>")
    text = text.replace(where, "<USER>@<HOST>:<PORT>")
    text = re.sub(r"lib/[0-9a-f]{16}", "lib/<DIGEST>", text)
    check_golden("slurm_via_magic.sh", text)


@pytest.mark.slurm
def test_dry_run_submits_nothing(sh, env):
    before = len(api.list_jobs())
    with capture_output() as cap:
        ok(sh, "%%cluster slurm --dry-run --time 5\ny = 1")
    assert "#SBATCH --time=00:05:00" in cap.stdout and "# outputs: y" in cap.stdout
    assert len(api.list_jobs()) == before


@pytest.mark.slurm
def test_no_injection_through_names_and_options(sh, env, tmp_path):
    target = tmp_path / "pwned"
    name = f"x; touch {target}"
    ok(sh, f"%%cluster slurm --name '{name}'\ndone = 1")
    rec = last_job()
    assert sh.user_ns["done"] == 1 and not target.exists()
    assert "touch" in rec.name and f"JobName={job_name(rec.name)} " in scontrol(rec.native_id)
    r = run(sh, "%%cluster slurm --partition '$(id)'\n1")
    assert isinstance(r.error_in_exec, UsageError) and "invalid partition" in str(r.error_in_exec)
    # free text reaches sbatch as one quoted word, never a shell: sbatch refuses the feature
    r = run(sh, f"%%cluster slurm --constraint '$(touch {target})'\n1")
    assert isinstance(r.error_in_exec, UsageError) and "sbatch" in str(r.error_in_exec)
    assert not target.exists()


@pytest.mark.slurm
def test_refusals_say_why_in_one_line(sh, env):
    before = len(api.list_jobs())
    r = run(sh, "%%cluster slurm --time 99999999999999999999\n1")
    assert isinstance(r.error_in_exec, UsageError), repr(r.error_in_exec)
    assert "at most 366 days" in str(r.error_in_exec)
    assert len(api.list_jobs()) == before          # refused before anything was submitted
    for option, said in (("--mem 99999999T", "Memory specification can not be satisfied"),
                         ("--constraint nosuchfeature", "Invalid feature specification")):
        r = run(sh, f"%%cluster slurm {option}\n1")
        err = str(r.error_in_exec)
        assert isinstance(r.error_in_exec, UsageError), repr(r.error_in_exec)
        assert f"sbatch: error: {said}" in err or said in err, err
        assert "(sbatch --parsable " in err and "\n" not in err and "mkdir" not in err, err
        assert last_job().state is JobState.FAILED


@pytest.mark.slurm
def test_scancel_from_outside_cancels_the_cell(sh, env):
    submitted = time.time()

    def cancel_when_running() -> None:
        def running():
            rec = api.list_jobs(limit=1)[0]
            return rec if rec.submitted >= submitted and rec.native_id and \
                Path(JobPaths.from_dir(rec.job_dir).started).exists() else None
        rec = wait_for(running)
        subprocess.run(["scancel", rec.native_id], check=True)

    th = threading.Thread(target=cancel_when_running)
    th.start()
    r = run(sh, "%%cluster slurm\nimport time\ntime.sleep(60)")
    th.join()
    err = r.error_in_exec
    assert isinstance(err, JobCancelledError), repr(err)
    assert err.state == "cancelled" and "SIGTERM" in str(err)
    assert last_job().state is JobState.CANCELLED


@pytest.mark.slurm
def test_a_cell_whose_job_can_never_start_is_let_go(sh, env):
    # a real job that fails, and a cell that may only start after it succeeded: SLURM keeps
    # the cell's job pending with reason DependencyNeverSatisfied for ever
    failed = subprocess.run(["sbatch", "--parsable", "--partition", "debug", "--output",
                             "/dev/null", "--wrap", "false"], check=True, capture_output=True,
                            text=True).stdout.strip().split(";")[0]
    wait_for(lambda: subprocess.run(["squeue", "-h", "-j", failed], capture_output=True,
                                    text=True).stdout.strip() == "", timeout=60)
    r = run(sh, f"%%cluster slurm --directive=--dependency=afterok:{failed}\n'never runs'")
    err = r.error_in_exec
    assert isinstance(err, JobCancelledError), repr(err)
    assert "depends on failed" in str(err) and "could never start" in str(err), str(err)
    rec = last_job()
    assert rec.state is JobState.CANCELLED and "could never start" in rec.reason
    # the scheduler forgot it too: nothing is left in the queue
    wait_for(lambda: subprocess.run(["squeue", "-h", "-j", rec.native_id], capture_output=True,
                                    text=True).stdout.strip() == "", timeout=30)


@pytest.mark.slurm
def test_memory_limit_gives_out_of_memory(sh, env):
    r = run(sh, "%%cluster slurm --mem 200M\nblock = bytearray(600 << 20)\n"
                "for i in range(0, len(block), 4096):\n    block[i] = 1\n"
                "import time\ntime.sleep(10)")
    err = r.error_in_exec
    assert isinstance(err, JobFailedError), repr(err)
    assert last_job().state is JobState.OUT_OF_MEMORY and "--mem" in err.reason
    assert "exceeded memory limit" in err.log_tail


@pytest.mark.slurm
def test_works_when_accounting_is_disabled(sh, env):
    from clusterjupyter.backends import backend_for

    assert ok(sh, "%%cluster noacct\n'no accounting'") == "no accounting"
    rec = last_job()
    sched = backend_for("noacct").scheduler
    # squeue --states=all still knows the finished job (after a moment in COMPLETING)
    status = wait_for(lambda: (lambda st: st if st[rec.native_id].state.final else None)(
        sched.status([rec.native_id, "999999999"], [rec.id, "x"])), timeout=30, step=0.2)
    assert status[rec.native_id].state is JobState.COMPLETED
    assert "999999999" not in status and getattr(sched, "_no_sacct", False)


# -- faults on the real services ----------------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.ssh
def test_sshd_restart_while_a_slurm_job_runs(sh, env, tmp_path):
    value = through_sshd_restart(sh, "sshslurm", "print('tick', flush=True)\n'survived'",
                                 tmp_path / "restarted")
    assert value == "survived"
    assert last_job().state is JobState.COMPLETED


@pytest.mark.slurm
@pytest.mark.ssh
def test_upload_cut_is_resumed_and_one_job_is_submitted(sh, env):
    import numpy as np

    from clusterjupyter.backends import backend_for

    backend = backend_for("sshslurm")
    sh.user_ns["big"] = np.random.default_rng(7).random(12 << 20)    # 96 MiB
    blobs = env.work / "ssh" / "blobs"
    cut = []

    def cut_midway() -> None:
        def growing():
            parts = [p for p in blobs.glob(".*.part") if p.stat().st_size > 32 << 20] \
                if blobs.exists() else []
            return parts
        wait_for(growing, timeout=60, step=0.005)
        backend.transport.break_connection()
        cut.append(time.time())

    before = backend.transport.connects
    name = f"cj-upload-{uuid.uuid4().hex[:8]}"
    th = threading.Thread(target=cut_midway)
    th.start()
    value = ok(sh, f"%%cluster sshslurm --name {name} --mem 600M\nfloat(big.sum())")
    th.join()
    assert cut and backend.transport.connects > before
    assert value == pytest.approx(float(sh.user_ns["big"].sum()))
    assert count_jobs(name) == 1


@pytest.mark.slurm
@pytest.mark.ssh
def test_connection_cut_during_sbatch_submits_once(sh, env):
    from clusterjupyter.backends import backend_for

    backend = backend_for("slowsubmit")
    ok(sh, "%%cluster slowsubmit\nwarm = 1")
    jobs = env.work / "slow" / "jobs"
    seen = {p.name for p in jobs.iterdir()}
    before = backend.transport.connects

    def cut_while_sbatch_runs() -> None:
        wait_for(lambda: [p for p in jobs.iterdir()
                          if p.name not in seen and (p / ".submit").exists()], step=0.01)
        backend.transport.break_connection()

    name = f"cj-submit-{uuid.uuid4().hex[:8]}"
    th = threading.Thread(target=cut_while_sbatch_runs)
    th.start()
    assert ok(sh, f"%%cluster slowsubmit --name {name}\n'once'") == "once"
    th.join()
    assert backend.transport.connects > before
    assert count_jobs(name) == 1
