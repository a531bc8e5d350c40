"""One scenario, every batch scheduler: each test runs on the project's real one-node SLURM, real
Grid Engine 8.1.9 and the Torque ``qsub``/``qstat`` wrappers over SLURM (scripts/testclusters.sh),
through a real IPython shell. What differs between schedulers is data in :data:`CLUSTERS`; the
``cluster`` fixture is parametrized over them (each parameter carries its service's marker).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from IPython.utils.capture import capture_output

from clusterjupyter.backends import backend_for
from clusterjupyter.errors import JobFailedError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.states import JobState
from helpers import (cancel_leftovers, check_golden, dry_run, ensure, last_job, normalized,
                     scheduler_env, wait_for, wait_started, write_profiles)
from shells import ok, run

SGE_BIN = "/usr/lib/gridengine"


@dataclass
class Cluster:
    """One scheduler of the test clusters, as the scenarios see it."""

    name: str                          # profile and scheduler name
    profile: dict                      # its profiles.toml table
    job_id_env: str                    # variable holding the native job id in the job
    outside: Callable[..., subprocess.CompletedProcess]   # run one of its commands
    cancel_command: str                # what a user types to cancel ("scancel")
    time_limit: str                    # a --time the scheduler enforces quickly
    timeout_says: str                  # in the reason of a job that hit it
    full_options: str                  # every option this scheduler takes, for --dry-run
    job_options: str                   # a small real job for the golden script
    queue: str                         # the queue (partition) jobs land in
    blocker_seconds: int = 180
    release_timeout: float = 300
    shows_held: bool = True            # its status tells held from queued
    info: dict = field(default_factory=dict)

    def native_name(self, native_id: str) -> str:
        """The name the scheduler itself shows for a job."""
        if self.name == "slurm":
            out = self.outside("scontrol", "show", "job", "-o", native_id).stdout
            return re.search(r"JobName=(\S+)", out).group(1)
        if self.name == "pbs":
            out = self.outside("qstat", "-f", native_id).stdout
            return re.search(r"Job_Name = (\S+)", out).group(1)
        # Grid Engine: from accounting, written a moment after the job ended
        wait_for(lambda: self.outside("qacct", "-j", native_id).returncode == 0, 30, "qacct")
        out = self.outside("qacct", "-j", native_id).stdout
        return re.search(r"^jobname\s+(\S+)", out, re.M).group(1)


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _slurm(info: dict) -> Cluster:
    return Cluster(
        "slurm", {"scheduler": "slurm", "python": sys.executable,
                  "resources": {"partition": info["partition"], "mem": "300M"}},
        "SLURM_JOB_ID", lambda cmd, *args: _run([cmd, *args]), "scancel",
        time_limit="0:00:20", timeout_says="time limit",
        full_options="--time 1:30:00 --cpus 2 --mem 3G --nodes 1 --partition debug "
                     "--account physics --gpus 1 --constraint bigmem --name full-options "
                     "--directive=--exclusive",
        job_options="--time 5 --cpus 1 --mem 300M --name golden", queue=info["partition"],
        info=info)


def _pbs(info: dict) -> Cluster:
    # the wrappers live in a directory of their own (they clash with Grid Engine's qsub),
    # named by the bin_dir scheduler option: nothing's PATH changes
    assert info["bin_dir"] not in os.environ.get("PATH", "")
    return Cluster(
        "pbs", {"scheduler": "pbs", "resources": {"mem": "300M"},
                "scheduler_options": {"bin_dir": info["bin_dir"]}},
        "SLURM_JOB_ID", lambda cmd, *args: _run([os.path.join(info["bin_dir"], cmd), *args]),
        "qdel", time_limit="0:00:20", timeout_says="walltime",
        full_options="--time 1:30:00 --cpus 2 --mem 3G --nodes 1 --partition debug "
                     "--account physics --gpus 1 --constraint bigmem --name full-options "
                     "--directive '-m n'",
        job_options="--time 5 --cpus 1 --mem 300M --name golden", queue=info["queue"],
        shows_held=False, info=info)


def _sge(info: dict) -> Cluster:
    # the binaries need SGE_ROOT: the kernel has none, command_env gives it to them only
    env = {"SGE_ROOT": info["sge_root"], "SGE_CELL": info["sge_cell"]}
    return Cluster(
        "sge", {"scheduler": "sge", "resources": {"partition": info["queue"]},
                "scheduler_options": {"bin_dir": SGE_BIN, "command_env": env,
                                      "pe": info["pe"]}},
        "JOB_ID", lambda cmd, *args: _run([os.path.join(SGE_BIN, cmd), *args], env), "qdel",
        time_limit="0:00:05", timeout_says="h_rt",
        full_options="--time 1:30:00 --cpus 4 --mem 6G --partition all.q --account physics "
                     "--gpus 1 --name full-options --directive '-l scratch=10G'",
        job_options="--time 5 --cpus 2 --mem 1G --name golden", queue=info["queue"],
        blocker_seconds=120, release_timeout=60, info=info)


CLUSTERS = {"slurm": _slurm, "pbs": _pbs, "sge": _sge}


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, name))
                        for name in CLUSTERS])
def cluster(request, cj_home, monkeypatch) -> Cluster:
    """A profile named after the scheduler on its real test cluster (the kernel's own
    environment has no Grid Engine settings and no PBS on PATH)."""
    monkeypatch.delenv("SGE_ROOT", raising=False)
    monkeypatch.delenv("SGE_CELL", raising=False)
    c = CLUSTERS[request.param](ensure(request.param)[request.param])
    write_profiles(cj_home, {c.name: c.profile})
    return c


@pytest.fixture
def cleanup():
    """Jobs appended here are cancelled after the test if still active."""
    jobs: list = []
    yield jobs
    cancel_leftovers(jobs)


# -- scenarios ----------------------------------------------------------------------------------

def test_values_come_back_from_a_batch_job(shell, cluster):
    ok(shell, "base = 20")
    value = ok(shell, f"%%cluster {cluster.name}\nimport os\nanswer = base + 22\n"
                      f"where = os.environ.get({cluster.job_id_env!r})\nanswer * 2")
    assert value == 84 and shell.user_ns["answer"] == 42
    rec = last_job()
    assert rec.state is JobState.COMPLETED and rec.scheduler == cluster.name
    # it ran under the scheduler, as the job the submit command announced
    assert shell.user_ns["where"] == rec.native_id == scheduler_env(rec)[cluster.job_id_env]
    # the scheduler's output went where the script said, not into the current directory
    assert os.path.exists(JobPaths.from_dir(rec.job_dir).scheduler_log)
    assert not list(Path.cwd().glob("cell-*.o*"))


def test_exception_comes_back_with_its_type(shell, cluster):
    ok(shell, "class Bad(RuntimeError):\n    pass")
    r = run(shell, f"%%cluster {cluster.name}\nx = 5\nraise Bad(f'no {{x}}')")
    assert isinstance(r.error_in_exec, shell.user_ns["Bad"]) and str(r.error_in_exec) == "no 5"
    assert shell.user_ns["x"] == 5 and last_job().state is JobState.FAILED


def test_scripts_match_golden_files(shell, cluster, cj_home):
    text = dry_run(shell, f"{cluster.name} {cluster.full_options}")
    root = backend_for(cluster.name).root
    check_golden(f"{cluster.name}_full.sh", normalized(text, f"{root}/jobs/{'0' * 32}", cj_home))
    # the script a real job was submitted with
    ok(shell, f"%%cluster {cluster.name} {cluster.job_options}\nv = 1")
    rec = last_job()
    script = open(JobPaths.from_dir(rec.job_dir).script).read()
    check_golden(f"{cluster.name}_job.sh", normalized(script, rec.job_dir, cj_home))
    assert rec.state is JobState.COMPLETED and rec.options["time"] == 300


def test_job_name_cannot_inject(shell, cluster, tmp_path):
    marker = tmp_path / "pwned"
    name = f'x";touch {marker};`touch {marker}`$(touch {marker})'
    ok(shell, f"%%cluster {cluster.name} --name '{name}'\nv = 1")
    rec = last_job()
    script = open(JobPaths.from_dir(rec.job_dir).script).read()
    assert "$(" not in script and "`" not in script and ";touch" not in script
    assert not marker.exists()
    assert rec.state is JobState.COMPLETED and rec.name == name
    # what the scheduler calls it: a plain word
    assert cluster.native_name(rec.native_id).startswith("x__touch__tmp_")


def test_cancel_from_the_magic_and_from_outside(shell, cluster, cleanup):
    job = ok(shell, f"%%cluster {cluster.name} --async\nimport time\ntime.sleep(120)\nnever = 1")
    cleanup.append(job)
    wait_started(job)
    with capture_output() as cap:
        ok(shell, f"%cluster cancel {job.id[:8]}")
    assert "cancelled" in cap.stdout and job.state is JobState.CANCELLED
    # from outside, as a user at a terminal would
    job = ok(shell, f"%%cluster {cluster.name} --async\nimport time\ntime.sleep(120)\nnever = 1")
    cleanup.append(job)
    wait_started(job)
    assert cluster.outside(cluster.cancel_command, job.native_id).returncode == 0
    assert job.wait(60) is JobState.CANCELLED
    ok(shell, "pass")
    assert "never" not in shell.user_ns


def test_queue_lists_the_running_job_and_hold_release(shell, cluster, cleanup):
    """The queue lists a running job; a job cancelled before it ran ends cancelled; a held job
    stays queued with CPUs free and runs once released. Other tests may share the one 2-CPU
    node: the held job asks for both CPUs, so the running one-CPU blocker keeps it waiting
    whatever else runs."""
    profile = cluster.name
    sched = backend_for(profile).scheduler
    blocker = ok(shell, f"%%cluster {profile} --async --name blocker\n"
                        f"import time\ntime.sleep({cluster.blocker_seconds})")
    cleanup.append(blocker)
    wait_started(blocker)
    entries = {q.native_id: q for q in sched.queue()}
    entry = entries[blocker.native_id]
    assert (entry.state, entry.name, entry.partition) == (JobState.RUNNING, "blocker",
                                                          cluster.queue)
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
    held = sched.status([waiting.native_id], [waiting.id])[waiting.native_id]
    assert held.state is JobState.PENDING
    if cluster.shows_held:
        assert "held" in held.reason, held
    blocker.cancel()
    time.sleep(3)     # a few scheduling intervals: free CPUs, yet it must not start
    assert waiting.state is JobState.PENDING
    assert sched.status([waiting.native_id], [waiting.id])[waiting.native_id].state \
        is JobState.PENDING
    sched.release(waiting.native_id)
    assert waiting.wait(cluster.release_timeout) is JobState.COMPLETED
    ok(shell, "pass")
    assert shell.user_ns["after"] == "released"


def test_time_limit_ends_the_job_as_timeout(shell, cluster):
    """SLURM (and the wrappers over it) enforce whole minutes, checked every 30 s."""
    r = run(shell, f"%%cluster {cluster.name} --time {cluster.time_limit}\n"
                   "import time\ntime.sleep(600)")
    err = r.error_in_exec
    assert isinstance(err, JobFailedError) and err.state == "timeout", repr(err)
    rec = last_job()
    assert rec.state is JobState.TIMEOUT and cluster.timeout_says in rec.reason
    assert rec.finished - rec.started < 150


def test_a_refusal_is_one_line_with_the_scheduler_message(shell, cluster):
    """The submit command refuses an unknown queue: the cell's error is the scheduler's own
    message and the command, on one line (not the wrapper that submits exactly once)."""
    r = run(shell, f"%%cluster {cluster.name} --partition nosuchqueue\nv = 1")
    err = str(r.error_in_exec)
    assert "nosuchqueue" in err and "\n" not in err and "mkdir" not in err, err
    program = "sbatch" if cluster.name == "slurm" else "qsub"
    assert re.search(rf"\({re.escape(program)}|/{program} ", err), err
    assert "v" not in shell.user_ns and last_job().state is JobState.FAILED
