"""Helpers shared by the test modules (importable as ``helpers``: conftest puts tests/ on
sys.path). Real services only: :func:`ensure` starts them and fails, never skips, when one
cannot start."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from IPython.utils.capture import capture_output

import testclusters
from clusterjupyter import api
from clusterjupyter.jobdir import JobPaths
from shells import new_shell, ok

GOLDEN = Path(__file__).parent / "golden"
RECORDED = Path(__file__).parent / "recorded"


# -- services -----------------------------------------------------------------------------------

def ensure(*services: str) -> dict:
    """Start the real test services (``clusters.json`` back); one that cannot start fails the
    test."""
    try:
        return testclusters.ensure(*services)
    except RuntimeError as e:
        pytest.fail(f"test clusters {services} cannot start:\n{e}", pytrace=False)


# -- waiting ------------------------------------------------------------------------------------

def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "",
             step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(step)


def wait_started(job, timeout: float = 240) -> None:
    """Wait for the runner to start (generous: other tests may keep the one node busy)."""
    paths = JobPaths.from_dir(job.record.job_dir)
    wait_for(lambda: os.path.exists(paths.started), timeout, f"job {job.id[:8]} to start",
             step=0.2)


# -- jobs ---------------------------------------------------------------------------------------

def last_job():
    """The newest job of the journal."""
    return api.list_jobs(limit=1)[0]


def started_doc(rec) -> dict:
    """The runner's ``started.json`` of a job record."""
    return json.loads(Path(JobPaths.from_dir(rec.job_dir).started).read_text())


def scheduler_env(rec) -> dict:
    """The scheduler's variables the runner saw (recorded in started.json)."""
    return started_doc(rec)["env"]


def cancel_leftovers(jobs: list) -> None:
    """Cancel the jobs a test left queued or running (a failed assertion must not leave a held
    or sleeping job on the shared test cluster)."""
    for job in jobs:
        try:
            if not job.record.state.final:
                job.backend.scheduler.cancel([job.native_id])
        except Exception:
            pass


def scancel_leftovers() -> None:
    """Cancel on SLURM every journal job not yet final (never leave a job of ours on the shared
    test cluster, even after a failed test)."""
    left = [r.native_id for r in api.list_jobs() if r.native_id and not r.state.final]
    if left:
        subprocess.run(["scancel", *left], capture_output=True)


# -- golden files -------------------------------------------------------------------------------

def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; ``CJ_UPDATE_GOLDEN=1`` rewrites the file instead."""
    path = GOLDEN / name
    if os.environ.get("CJ_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing (run once with CJ_UPDATE_GOLDEN=1 and review it)"
    assert text == path.read_text(), f"generated output differs from {path} (CJ_UPDATE_GOLDEN=1)"


def recorded(name: str) -> str:
    """A scheduler's output recorded from the test clusters (tests/recorded/NAME)."""
    return (RECORDED / name).read_text()


def normalized(script: str, job_dir: str, home: Path) -> str:
    """A job script with this run's paths replaced by placeholders (for golden files)."""
    text = script.replace(job_dir, "JOBDIR").replace(str(Path(job_dir).parents[1]), "ROOT")
    text = text.replace(str(home / "config" / "secret"), "SECRET")
    text = re.sub(r"# clusterjupyter job [0-9a-f]{32}", "# clusterjupyter job ID", text)
    return text.replace(shlex.quote(sys.executable), "PYTHON")


def dry_run(shell, line: str) -> str:
    """What ``%%cluster LINE --dry-run`` prints, without the lines that describe this run
    (profile, inputs, outputs, working directory)."""
    with capture_output() as cap:
        ok(shell, f"%%cluster {line} --dry-run\nvalue = 1")
    skip = ("# profile", "# inputs", "# outputs", "# working directory")
    return "\n".join(x for x in cap.stdout.splitlines() if not x.startswith(skip)) + "\n"


# -- profiles and homes -------------------------------------------------------------------------

def write_profiles(home: Path, profiles: dict) -> None:
    """``profiles.toml`` in the clusterjupyter home ``home``."""
    import tomli_w

    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "profiles.toml").write_text(tomli_w.dumps({"profiles": profiles}))


def ssh_profile(ssh: dict, workdir: Path, **extra: object) -> dict:
    """A profile reaching the test sshd (``ssh``: its section of clusters.json)."""
    prof = {"scheduler": "local", "host": ssh["host"], "port": ssh["port"], "user": ssh["user"],
            "identity_file": ssh["identity_file"], "known_hosts": ssh["known_hosts"],
            "python": sys.executable, "workdir": str(workdir)}
    prof.update(extra)
    return {k: v for k, v in prof.items() if v is not None}


@dataclass
class Env:
    base: Path
    home: Path
    profiles: dict


def make_env(tmp_path_factory, name: str, profiles: dict) -> tuple[Env, pytest.MonkeyPatch]:
    """A clusterjupyter home with ``profiles`` and a HOME of its own (no personal ~/.ssh), for
    module-scoped fixtures (undo the MonkeyPatch at the end)."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp(name)
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    mp.setenv("HOME", str(home))
    mp.setenv("CLUSTERJUPYTER_HOME", str(base / "cj"))
    mp.setenv("IPYTHONDIR", str(base / "ipython"))
    write_profiles(base / "cj", profiles)
    return Env(base, home, profiles), mp


def new_module_shell():
    return new_shell()


def close_shell_and_backends() -> None:
    """Forget the shell and close every backend's transport (end of a module's fixtures)."""
    from IPython.core.interactiveshell import InteractiveShell

    from clusterjupyter import backends

    InteractiveShell.clear_instance()
    with backends._lock:
        olds = list(backends._backends.values())
        backends._backends.clear()
    for b in olds:
        try:
            b.transport.close()
        except Exception:
            pass


def close_module_env(mp: pytest.MonkeyPatch) -> None:
    """End of a module-scoped :func:`make_env` fixture: shell and transports closed, the
    environment put back."""
    close_shell_and_backends()
    mp.undo()


def module_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A fresh ``CLUSTERJUPYTER_HOME`` for a module-scoped fixture (``yield from`` it); the old
    value comes back after."""
    path = tmp_path_factory.mktemp(name)
    old = os.environ.get("CLUSTERJUPYTER_HOME")
    os.environ["CLUSTERJUPYTER_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CLUSTERJUPYTER_HOME", None)
    else:
        os.environ["CLUSTERJUPYTER_HOME"] = old


def through_sshd_restart(sh, profile: str, cell: str, gate: Path):
    """Run ``cell`` on ``profile`` with the test sshd restarted (and the client's connection
    dropped) while its job runs; the value the cell gave.

    No timer: once the job has started, the restart happens, and only then does the job go on
    (it first waits for the file ``gate``, which the restart creates). However slow the machine
    is, the restart lands while the job runs and the result comes back over a new connection.
    """
    from clusterjupyter.backends import backend_for

    backend = backend_for(profile)
    ok(sh, f"%%cluster {profile}\nwarm = 1")     # connected, runner shipped
    warm = last_job().id
    failed: list[BaseException] = []

    def restart() -> None:
        try:
            job = wait_for(lambda: (lambda r: r if r.id != warm else None)(last_job()), 240,
                           "the cell's job to be submitted", step=0.2)
            wait_for(lambda: os.path.exists(JobPaths.from_dir(job.job_dir).started), 240,
                     f"job {job.id[:8]} to start", step=0.2)
            testclusters.restart_sshd()
            backend.transport.break_connection()
        except BaseException as e:  # the test fails below, the job is let go on
            failed.append(e)
        finally:
            gate.touch()

    # the job waits for the gate without binding a name (nothing extra comes back)
    wait = (f"assert any(__import__('os').path.exists({str(gate)!r}) "
            f"or __import__('time').sleep(0.1) for t in range(3000)), 'no sshd restart'\n")
    before = backend.transport.connects
    thread = threading.Thread(target=restart)
    thread.start()
    try:
        value = ok(sh, f"%%cluster {profile}\n{wait}{cell}")
    finally:
        gate.touch()
        thread.join()
    assert not failed, failed
    assert backend.transport.connects > before      # it did reconnect
    return value
