"""Real test clusters for the test-suite: SLURM, Grid Engine, Torque wrappers, sshd.

A thin layer over ``scripts/testclusters.sh`` (see ``scripts/README.md``), which
installs and starts the services on this machine (root, Debian 12).  No pytest
fixtures here, just functions; a conftest can wrap them, e.g.::

    import pytest
    import testclusters  # tests/ is on sys.path (see conftest.py)

    @pytest.fixture(scope="session")
    def slurm_cluster():
        try:
            return testclusters.ensure("slurm")["slurm"]
        except RuntimeError as e:
            pytest.skip(str(e))   # or fail, in CI

``ensure()`` returns the parsed ``clusters.json``; its keys per section are
documented in ``scripts/README.md`` (``ssh``, ``slurm``, ``sge``, ``pbs``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "testclusters.sh"
SERVICES = ("slurm", "sshd", "sge", "pbs")
# service name -> its section in clusters.json
SECTION = {"slurm": "slurm", "sshd": "ssh", "sge": "sge", "pbs": "pbs"}

# A cold install + start of everything takes a few minutes at most; this only
# guards against a hung daemon.
START_TIMEOUT_S = 1800
_TAIL_LINES = 60

_lock = threading.Lock()
_started: set[str] = set()  # services this process has already seen started


def state_dir() -> Path:
    """The script's state directory (CJ_TESTCLUSTERS_DIR or its default)."""
    return Path(os.environ.get("CJ_TESTCLUSTERS_DIR", "/var/tmp/clusterjupyter-testclusters"))


def clusters_json() -> Path:
    return state_dir() / "clusters.json"


def _normalize(services: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for s in services or ("all",):
        if s == "all":
            names.extend(SERVICES)
        elif s == "ssh":
            names.append("sshd")
        elif s in SERVICES:
            names.append(s)
        else:
            raise ValueError(f"unknown test service {s!r} (expected one of {SERVICES} or 'all')")
    return [s for s in SERVICES if s in names]  # the script's order, no duplicates


def _run(*args: str, timeout: float = START_TIMEOUT_S) -> str:
    cmd = ["bash", str(SCRIPT), *args]
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = e.output or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        raise RuntimeError(
            f"{' '.join(cmd[1:])} timed out after {timeout:.0f}s:\n{_tail(out)}"
        ) from None
    except OSError as e:
        raise RuntimeError(f"cannot run {SCRIPT}: {e}") from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[1:])} failed with exit code {proc.returncode}:\n{_tail(proc.stdout)}"
        )
    return proc.stdout


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-_TAIL_LINES:])


def info() -> dict:
    """The current clusters.json (what is up), without starting anything; {} if none."""
    try:
        return json.loads(clusters_json().read_text())
    except FileNotFoundError:
        return {}


def ensure(*services: str, recheck: bool = False) -> dict:
    """Start (installing if needed) the given services and return clusters.json.

    ``services``: any of "slurm", "sshd" (or "ssh"), "sge", "pbs", "all";
    none means all.  A service already started by this process is not checked
    again unless ``recheck`` is true (the script's own check of a running
    service takes well under a second, but tests call this often).  Raises
    RuntimeError with the tail of the script's output if a service cannot be
    started.
    """
    names = _normalize(services)
    with _lock:
        todo = names if recheck else [s for s in names if s not in _started]
        if todo:
            _run("start", *todo)
            _started.update(todo)
            if "pbs" in todo:
                _started.add("slurm")  # the PBS wrappers submit to SLURM
        data = info()
    missing = [SECTION[s] for s in names if SECTION[s] not in data]
    if missing:
        raise RuntimeError(f"{clusters_json()} has no section for {missing} after start")
    return data


def restart_sshd() -> dict:
    """Kill the test sshd and start it again (same port, same keys); returns clusters.json.

    Sessions already open keep running (they are separate sshd processes), like
    a real server's restart.
    """
    with _lock:
        _run("restart", "sshd")
        _started.add("sshd")
        return info()


def stop(*services: str) -> None:
    """Stop services (none means all); mainly for manual use."""
    names = _normalize(services)
    with _lock:
        _run("stop", *names)
        _started.difference_update(names)
        if "slurm" in names:
            _started.discard("pbs")


def status(*services: str) -> tuple[bool, str]:
    """(all healthy?, the script's status report) for the given services."""
    try:
        return True, _run("status", *_normalize(services), timeout=120)
    except RuntimeError as e:
        return False, str(e)
