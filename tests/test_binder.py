"""Binder's ``binder/start`` as mybinder.org runs it: as an unprivileged user, not root.

The script is run as the user ``jovyan`` (created if missing) with a Python environment that
user can read (a venv of the system Python with the package's dependencies, cached under
/var/tmp, importing this working copy). It must start munged, slurmctld, slurmd and sshd as that
user next to the project's root-run test SLURM and sshd (other ports, its own munge socket),
write the ``slurm``, ``ssh`` and ``slurm-ssh`` profiles, export ``SLURM_CONF`` and exec its
arguments. Then a plain ``sbatch --wait`` and ``%%cluster slurm`` / ``ssh`` / ``slurm-ssh`` cells
run as that user on the new services.

Not covered here: repo2docker itself (apt.txt, runtime.txt, postBuild's ``pip install .``), and
Ubuntu's SLURM version (Binder's image) instead of Debian 12's 22.05.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
USER = "jovyan"
SYSTEM_PYTHON = "/usr/bin/python3"
DAEMONS = ("sshd", "slurmd", "slurmctld", "munged")


def _run(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _check(done: subprocess.CompletedProcess, what: str) -> str:
    assert done.returncode == 0, (f"{what} failed (exit code {done.returncode})\n"
                                  f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done.stdout


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        _check(_run(["useradd", "--create-home", "--shell", "/bin/bash", USER]), "useradd")
        return pwd.getpwnam(USER)


def _venv() -> Path:
    """A venv ``jovyan`` can use: the system Python, the dependencies, this working copy."""
    with open(REPO / "pyproject.toml", "rb") as f:
        deps = [d for d in tomllib.load(f)["project"]["dependencies"] if "tomli>" not in d]
    key = hashlib.sha256("\n".join(deps).encode()).hexdigest()[:12]
    venv = Path(f"/var/tmp/clusterjupyter-binder-venv-{key}")
    python = venv / "bin" / "python3"
    with open("/var/tmp/clusterjupyter-binder-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            if _run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"]).returncode != 0:
                _check(_run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                             "python3", "python3-venv"], timeout=600),
                       "apt-get install python3-venv")
            shutil.rmtree(venv, ignore_errors=True)
            _check(_run([SYSTEM_PYTHON, "-m", "venv", str(venv)]), "python3 -m venv")
            _check(_run([str(python), "-m", "pip", "install", "-q", *deps], timeout=600),
                   "pip install")
            (venv / ".complete").touch()
        site = _check(_run([str(python), "-c", "import sysconfig; "
                            "print(sysconfig.get_paths()['purelib'])"]), "venv").strip()
        Path(site, "clusterjupyter-working-copy.pth").write_text(f"{REPO}\n")
        _write_dist_info(Path(site))
        _check(_run(["chmod", "-R", "a+rX", str(venv)]), "chmod")
    return venv


def _write_dist_info(site: Path) -> None:
    """The working copy's metadata, as an editable install writes it (Binder's postBuild runs
    ``pip install .``): the entry points are the scheduler registry, so a working copy on
    ``sys.path`` alone would have no schedulers."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    dist = site / "clusterjupyter-0.0.0.dist-info"
    for old in site.glob("clusterjupyter-*.dist-info"):
        shutil.rmtree(old)
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clusterjupyter\n"
                                   "Version: 0.0.0\n")
    groups = {**project.get("entry-points", {}),
              **({"console_scripts": project["scripts"]} if "scripts" in project else {})}
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in groups.items()))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _stop(pids: list[int], grace: float = 15.0) -> None:
    """SIGTERM, wait for the processes to exit, SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _as_user(argv: list[str], env: dict[str, str], cwd: str, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    return _run(["runuser", "-u", USER, "--", "env", "-i",
                 *(f"{k}={v}" for k, v in env.items()), *argv], timeout=timeout, cwd=cwd)


@pytest.fixture
def binder(tmp_path):
    """The user's environment after ``binder/start`` ran, and the start script's output."""
    if os.geteuid() != 0:
        pytest.fail("test_binder needs root: it creates the user 'jovyan' and runs binder/start "
                    "as that user (deselect it with -m 'not slurm')")
    _check(_run(["bash", str(REPO / "scripts" / "testclusters.sh"), "install", "slurm", "sshd"],
                timeout=1800), "testclusters.sh install slurm sshd")
    account = _ensure_user()
    venv = _venv()
    probe = _run(["runuser", "-u", USER, "--", str(venv / "bin" / "python3"), "-c",
                  "import clusterjupyter"])
    if probe.returncode != 0:
        pytest.fail(f"user {USER} cannot import {REPO} (is every directory above it readable "
                    f"by others?): {probe.stderr}")
    work = Path(tempfile.mkdtemp(prefix="cj-binder-test-", dir=account.pw_dir))
    os.chown(work, account.pw_uid, account.pw_gid)
    ctld, slurmd, sshd = _free_ports(3)
    env = {"HOME": account.pw_dir, "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash",
           "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
           "CLUSTERJUPYTER_HOME": str(work / "cjhome"),
           "CJ_BINDER_DIR": str(work / "binder"),
           "CJ_BINDER_SLURMCTLD_PORT": str(ctld), "CJ_BINDER_SLURMD_PORT": str(slurmd),
           "CJ_BINDER_SSH_PORT": str(sshd)}
    try:
        started = _as_user(["bash", str(REPO / "binder" / "start"),
                            "sh", "-c", 'echo "exec: SLURM_CONF=$SLURM_CONF umask=$(umask)"'],
                           env, str(work))
        yield env, started, work
    finally:
        pids = []
        for name in DAEMONS:  # only the daemons this test started, by their pid files
            try:
                pids.append(int((work / "binder" / "run" / f"{name}.pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        _stop(pids)  # slurmctld saves its state while it exits: wait before removing the dir
        shutil.rmtree(work, ignore_errors=True)


JOB = """
import os, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "clusterjupyter")
for profile in sys.argv[1:]:
    r = shell.run_cell(f"%%cluster {profile}\\nimport getpass, os\\n"
                       "who = getpass.getuser(), os.environ.get('SLURM_CLUSTER_NAME')")
    assert r.success, r.error_in_exec
    print(profile, *shell.user_ns["who"])
"""


def test_binder_start_runs_slurm_and_sshd_as_an_unprivileged_user(binder):
    env, started, work = binder
    conf = f"{env['CJ_BINDER_DIR']}/slurm/slurm.conf"
    _check(started, "binder/start")
    assert "started: slurm ssh" in started.stderr, started.stderr
    umask = _as_user(["sh", "-c", "umask"], env, str(work)).stdout.strip()
    # it ends with exec "$@", with SLURM_CONF exported and the caller's umask back
    assert f"exec: SLURM_CONF={conf} umask={umask}" in started.stdout, started.stdout

    # every daemon runs as the user, not root
    for name in DAEMONS:
        pid = int((work / "binder" / "run" / f"{name}.pid").read_text().split()[0])
        assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam(USER).pw_uid, name

    env = {**env, "SLURM_CONF": conf}
    out = _as_user(["sbatch", "--wait", "--parsable", "-o", "plain.out", "--wrap",
                    'echo "$(id -un) $SLURM_CLUSTER_NAME"'], env, str(work), timeout=60)
    _check(out, "sbatch --wait")
    assert (work / "plain.out").read_text().split() == [USER, "binder"]

    done = _as_user([f"{env['PATH'].split(':')[0]}/python3", "-c", JOB, "slurm", "ssh",
                     "slurm-ssh"], env, str(work), timeout=120)
    lines = _check(done, "%%cluster slurm / ssh / slurm-ssh").splitlines()
    assert "slurm jovyan binder" in lines     # ran by the Binder SLURM, not the test cluster's
    assert "ssh jovyan None" in lines
    assert "slurm-ssh jovyan binder" in lines  # sbatch over SSH found the Binder SLURM too
