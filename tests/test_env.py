"""The environment guard, other interpreters and env sync, on the real sshd, SLURM and Grid
Engine.

Second interpreters are real virtual environments (no system site-packages) built once per
machine under /var/tmp and reused: ``old`` (numpy<2, dill), ``patch`` (the kernel's numpy
minor version, another patch level, dill) and ``nonumpy`` (dill only). The local package is a
real project installed with ``pip install -e`` (and from its directory, and from a wheel file)
into a prefix put on the kernel's path. Conda is not installed here: its environments' layout
(``conda-meta`` records, dist-info written by conda) is made on disk and read for real.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import dill
import numpy
import pytest

from clusterjupyter import api, envconda, envprobe, envreqs, envsync
from clusterjupyter.envguard import Row, cell_imports, compare, pickle_modules, table
from clusterjupyter.envprobe import InterpreterInfo
from clusterjupyter.serialize import dumps
from helpers import close_module_env, ensure, make_env, new_module_shell, ssh_profile
from shells import ok, run

CACHE = Path("/var/tmp/clusterjupyter-envtest") / f"py{sys.version_info[0]}{sys.version_info[1]}"


def _patch_numpy() -> str:
    """A numpy release with the kernel's major.minor and another patch level."""
    major, minor, patch = (int(x) for x in numpy.__version__.split(".")[:3])
    return f"{major}.{minor}.{patch - 1 if patch else patch + 1}"


VENVS = {"old": ["numpy<2", f"dill=={dill.__version__}"],
         "patch": [f"numpy=={_patch_numpy()}", f"dill=={dill.__version__}"],
         "nonumpy": [f"dill=={dill.__version__}"]}


def venv_python(name: str) -> str:
    """The interpreter of a cached test environment (built the first time, under a lock)."""
    d = CACHE / name
    ready = d / ".ready"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(d)], check=True)
            subprocess.run([str(d / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", *VENVS[name]], check=True)
            ready.write_text(" ".join(VENVS[name]))
    return str(d / "bin" / "python")


# -- pure ---------------------------------------------------------------------------------------

def test_pickle_references_name_their_modules():
    import fractions

    data = dumps({"a": numpy.arange(3), "f": fractions.Fraction(1, 3)})
    mods = pickle_modules(data[data.index(b"\x80"):])
    assert {"numpy", "fractions"} <= mods
    assert cell_imports("import numpy.linalg as la\nfrom scipy import stats\nfrom . import x") \
        == {"numpy", "scipy"}


def info(python: str = "3.11.7", **dists: str) -> InterpreterInfo:
    return InterpreterInfo(python=python, executable="/x/bin/python",
                           dists={k.replace("_", "-"): v for k, v in dists.items()},
                           modules=[k for k in dists])


def test_decisions_refuse_only_what_cannot_load():
    np = {"numpy": ("numpy", "2.4.6")}
    # major/minor of a version-bound package in the pickles: refused
    v = compare("3.11.7", "0.4.1", False, np, {}, set(), info(numpy="1.26.4", dill="0.4.1"))
    assert [r.package for r in v.refused] == ["numpy"]
    # the same difference for a package only imported by the cell: a warning
    v = compare("3.11.7", "0.4.1", False, {}, np, set(), info(numpy="1.26.4", dill="0.4.1"))
    assert not v.refused and [r.package for r in v.warned] == ["numpy"]
    # patch level: a warning; missing: refused; another Python minor: refused
    v = compare("3.11.7", "0.4.1", False, np, {}, set(), info(numpy="2.4.5", dill="0.4.1"))
    assert not v.refused and v.warned[0].why == "patch level"
    v = compare("3.11.7", "0.4.1", False, np, {}, {"numpy"}, info(dill="0.4.1"))
    assert v.refused[0].cluster == "missing"
    v = compare("3.11.7", "0.4.1", True, {}, {}, set(), info("3.10.2", dill="0.3.8"))
    assert {r.package for r in v.refused} == {"python", "dill"}
    text = table(v.rows)
    assert text.splitlines()[0].split() == ["package", "kernel", "cluster"]
    assert "3.10.2" in text and "0.3.8" in text


def test_a_shipped_package_s_missing_dependency_is_a_warning():
    from clusterjupyter.envguard import dependency_rows

    rows = dependency_rows({"tomli-w": ("cj-localpkg", "1.2.0"), "dill": ("x", "0.4.1")},
                           info(dill="0.4.1"))
    assert [(r.package, r.cluster, r.why, r.refuse) for r in rows] == \
        [("tomli-w", "missing", "needed by cj-localpkg", False)]


def test_rows_align():
    text = table([Row("numpy", "2.4.6", "1.26.4", "major/minor", True)])
    head, row = text.splitlines()
    assert head.index("kernel") == row.index("2.4.6")


def test_direct_url_decides_how_a_distribution_travels():
    ref = envreqs.direct_reference
    assert ref("a", None) == ("index", None)
    assert ref("a", {"url": "file:///src/a%20b", "dir_info": {"editable": True}}) == \
        ("local", ("/src/a b", True))
    assert ref("a", {"url": "file:///src/a", "dir_info": {}}) == ("local", ("/src/a", False))
    assert ref("a", {"url": "file:///w/a-1.0-py3-none-any.whl", "archive_info": {}}) == \
        ("local", ("/w/a-1.0-py3-none-any.whl", False))
    assert ref("a", {"url": "https://h/r.git", "vcs_info": {"vcs": "git", "commit_id": "c0ffee"},
                     "subdirectory": "py"}) == ("url", "a @ git+https://h/r.git@c0ffee"
                                                "#subdirectory=py")
    assert ref("a", {"url": "https://h/a-1.0.tar.gz", "archive_info": {}}) == \
        ("url", "a @ https://h/a-1.0.tar.gz")


def test_source_hash_follows_the_source_not_its_build_products(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("X = 1\n")
    first = envreqs.source_digest(str(tmp_path))
    for junk in ("build", "__pycache__", "pkg.egg-info", ".git"):
        (tmp_path / junk).mkdir()
        (tmp_path / junk / "f").write_text("noise")
    assert envreqs.source_digest(str(tmp_path)) == first
    (tmp_path / "pkg" / "__init__.py").write_text("X = 2\n")
    assert envreqs.source_digest(str(tmp_path)) != first
    local = envreqs.LocalDist("p", "1.0", str(tmp_path), True, first)
    a = envreqs.Requirements("3.11", ["dill==0.4.1"], [local])
    b = envreqs.Requirements("3.11", ["dill==0.4.1"], [envreqs.LocalDist("p", "1.0",
                                                                         str(tmp_path), True,
                                                                         "0" * 64)])
    assert a.digest != b.digest != envreqs.Requirements("3.11", ["dill==0.4.1"]).digest
    assert a.text({"p": "/e/wheels/p-1.0-py3-none-any.whl"}).splitlines() == \
        ["dill==0.4.1", "p @ file:///e/wheels/p-1.0-py3-none-any.whl"]


def test_conda_packages_map_to_pip_requirements_or_are_named():
    assert envconda.pip_requirement("NumPy", "1.26.4") == ("numpy==1.26.4", "")
    assert envconda.pip_requirement("torch", "2.1.0+cu118")[0] is None
    assert "not a pip version" in envconda.pip_requirement("x", "1.2.3_p1")[1]
    assert envconda.pip_requirement("conda", "24.1.2") == (None, "conda's own tooling")
    torch = {"name": "pytorch", "version": "2.1.0",
             "files": ["lib/python3.11/site-packages/torch/__init__.py",
                       "lib/python3.11/site-packages/torch-2.1.0.dist-info/METADATA"]}
    assert envconda.record_requirement(torch) == ("torch==2.1.0", "")
    egg = {"name": "py-x", "files": ["lib/python3.11/site-packages/x_y-0.3-py3.11.egg-info"]}
    assert envconda.record_requirement(egg) == ("x-y==0.3", "")
    ssl = {"name": "openssl", "version": "3.2.1", "files": ["lib/libssl.so.3"]}
    line, why = envconda.record_requirement(ssl)
    assert line is None and "library" in why
    assert envconda.without_python([torch, ssl, {"name": "python", "files": []}]) == \
        [("openssl 3.2.1", why)]


def _dist_info(site: Path, name: str, version: str, installer: str) -> None:
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (d / "INSTALLER").write_text(f"{installer}\n")


def test_a_conda_environment_s_packages_become_requirements_or_are_named(tmp_path,
                                                                          monkeypatch):
    """A conda environment's layout on disk (conda-meta records, dist-info written by conda),
    read through importlib.metadata."""
    import json

    prefix = tmp_path / "conda"
    site = prefix / "lib" / "python3.11" / "site-packages"
    _dist_info(site, "cj-conda-a", "1.2.3", "conda")
    _dist_info(site, "cj-conda-b", "2.0+cuda118", "conda")
    meta = prefix / "conda-meta"
    meta.mkdir()
    records = {"py-cj-conda-a": ["lib/python3.11/site-packages/cj_conda_a-1.2.3.dist-info/"
                                 "METADATA"],
               "libcjfoo": ["lib/libcjfoo.so.1"]}
    for name, files in records.items():
        (meta / f"{name}-1.0-0.json").write_text(json.dumps({"name": name, "version": "1.0",
                                                            "files": files}))
    monkeypatch.syspath_prepend(str(site))
    reqs = envreqs.kernel_requirements(["py-cj-conda-a", "cj-conda-b", "libcjfoo"],
                                       prefix=str(prefix))
    assert "cj-conda-a==1.2.3" in reqs.lines
    assert not any(x.startswith(("cj-conda-b", "libcjfoo")) for x in reqs.lines)
    unmapped = dict(reqs.unmapped)
    assert "local build" in unmapped["cj-conda-b 2.0+cuda118"]
    assert "library" in unmapped["libcjfoo 1.0"]
    plan = "\n".join(reqs.plan())
    assert "not installable with pip (2)" in plan and "libcjfoo" in plan
    whole = envreqs.kernel_requirements(whole=True, prefix=str(prefix))
    assert "cj-conda-a==1.2.3" in whole.lines and "libcjfoo 1.0" in dict(whole.unmapped)


# -- real services ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clusters():
    return ensure("sshd", "slurm")


@pytest.fixture(scope="module")
def venvs():
    return {name: venv_python(name) for name in VENVS}


@pytest.fixture(scope="module")
def env(tmp_path_factory, clusters, venvs):
    ssh, slurm = clusters["ssh"], clusters["slurm"]
    base = tmp_path_factory.mktemp("env-work")
    res = {"partition": slurm["partition"], "time": "10m", "mem": "300M"}
    profiles = {
        "old": ssh_profile(ssh, base / "old", python=venvs["old"]),
        "patch": ssh_profile(ssh, base / "patch", python=venvs["patch"]),
        "nonumpy": ssh_profile(ssh, base / "nonumpy", python=venvs["nonumpy"]),
        "slurmold": {"scheduler": "slurm", "python": venvs["old"], "workdir": str(base / "so"),
                     "resources": res},
        "localpatch": {"scheduler": "local", "python": venvs["patch"],
                       "workdir": str(base / "lp")},
        "unchecked": ssh_profile(ssh, base / "unchecked", python=venvs["old"],
                                 environment="off"),
        "syncold": ssh_profile(ssh, base / "sync", python=venvs["old"]),
        "offline": ssh_profile(ssh, base / "offline", python=venvs["old"], env_offline=True),
        "synclocal": ssh_profile(ssh, base / "local", python=venvs["nonumpy"]),
        "slurmjob": {"scheduler": "slurm", "python": venvs["old"], "workdir": str(base / "sj"),
                     "env_build": "job", "resources": {**res, "mem": "1G"}},
        # the prelude fails on the compute node only (a module missing there)
        "slurmjobfail": {"scheduler": "slurm", "python": venvs["old"], "env_build": "job",
                         "workdir": str(base / "sjf"), "resources": res,
                         "prelude": ['[ -z "${SLURM_JOB_ID:-}" ] || exit 3']},
        # same work root: finds the environment "syncold" built, by its requirements' hash
        "autosync": ssh_profile(ssh, base / "sync", python=venvs["nonumpy"],
                                environment="sync"),
        "killed": ssh_profile(ssh, base / "killed", python=venvs["nonumpy"]),
    }
    e, mp = make_env(tmp_path_factory, "env", profiles)
    envprobe.forget()
    yield e
    close_module_env(mp)


@pytest.fixture(scope="module")
def sh(env):
    shell = new_module_shell()
    ok(shell, "import numpy as np\na = np.arange(6)")
    return shell


def refused(shell, profile: str) -> str:
    before = len(api.list_jobs(limit=1000))
    res = run(shell, f"%%cluster {profile}\nb = a * 2\nint(b.sum())")
    assert res.error_in_exec is not None
    assert len(api.list_jobs(limit=1000)) == before     # nothing reached the journal
    return str(res.error_in_exec)


@pytest.mark.ssh
def test_older_numpy_over_ssh_is_refused_with_a_table(sh, env, venvs):
    text = refused(sh, "old")
    assert "nothing was submitted" in text
    line = next(x for x in text.splitlines() if x.split()[:1] == ["numpy"])
    assert line.split()[1:3] == [numpy.__version__, "1.26.4"] or \
        line.split()[1] == numpy.__version__ and line.split()[2].startswith("1.")
    assert "%cluster env sync old" in text and "'python'" in text
    assert not list((env.base.parent).glob("env-work*/old/jobs/*"))


@pytest.mark.ssh
def test_missing_numpy_over_ssh_is_refused(sh):
    text = refused(sh, "nonumpy")
    assert "missing" in text and "numpy" in text


@pytest.mark.ssh
def test_the_guard_is_off_when_the_profile_says_so(sh):
    # the old numpy cannot restore a numpy 2 array: the job fails on the cluster, as before
    res = run(sh, "%%cluster unchecked\nb = a * 2")
    assert res.error_in_exec is not None and "nothing was submitted" not in str(res.error_in_exec)


@pytest.mark.ssh
def test_patch_level_difference_warns_and_the_job_runs_there(sh, env, venvs, capfd):
    value = ok(sh, "%%cluster patch\nimport os, sys\nexe = sys.executable\n"
                   "conn = os.environ.get('SSH_CONNECTION', '')\nb = a * 2\nint(b.sum())")
    assert value == 30
    assert sh.user_ns["exe"] == venvs["patch"] and sh.user_ns["conn"]
    err = capfd.readouterr().err
    assert f"numpy {numpy.__version__} here, {_patch_numpy()} there" in err
    assert len([x for x in err.splitlines() if "versions differ" in x]) == 1


@pytest.mark.ssh
def test_the_probe_runs_once_and_an_install_there_is_noticed(sh, env, venvs, monkeypatch):
    calls = []
    real = envprobe.probe

    def counting(*a, **kw):
        calls.append(a[1].name)
        return real(*a, **kw)

    monkeypatch.setattr(envprobe, "probe", counting)
    ok(sh, "%%cluster patch\nb = a + 1")
    assert calls == []                      # learned by the previous cell: no round trip
    envprobe.forget()                       # a new process: the cache file is checked
    ok(sh, "%%cluster patch\nb = a + 1")
    assert calls == []
    site = next(Path(venvs["patch"]).parents[1].glob("lib/python*/site-packages"))
    later = time.time() + 5
    os.utime(site, (later, later))          # what an install on the cluster does
    envprobe.forget()
    ok(sh, "%%cluster patch\nb = a + 1")
    assert calls == ["patch"]


@pytest.mark.ssh
def test_a_sweep_is_refused_like_a_single_job(sh):
    before = len(api.list_jobs(limit=1000))
    res = run(sh, '%%cluster old --sweep "k in [1, 2]"\nb = a * k')
    assert "nothing was submitted" in str(res.error_in_exec)
    assert len(api.list_jobs(limit=1000)) == before


@pytest.mark.slurm
def test_older_numpy_on_slurm_is_refused_before_sbatch(sh):
    text = refused(sh, "slurmold")
    assert "numpy" in text and "1.26.4" in text


def test_local_profile_with_another_interpreter_runs_without_the_package(sh, env, venvs,
                                                                        monkeypatch):
    # the venv cannot import clusterjupyter by itself: the runner travels to it
    monkeypatch.delenv("PYTHONPATH", raising=False)
    probe = subprocess.run([venvs["patch"], "-c", "import clusterjupyter"], capture_output=True,
                           cwd="/")
    assert probe.returncode != 0
    value = ok(sh, "%%cluster localpatch\nimport os, sys\nexe = sys.executable\npid = os.getpid()"
                   "\nint((a * 3).sum())")
    assert value == 45 and sh.user_ns["exe"] == venvs["patch"]
    assert sh.user_ns["pid"] != os.getpid()


# -- sync ---------------------------------------------------------------------------------------

def env_line(shell, line: str) -> str:
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        ok(shell, f"%cluster env {line}")
    return cap.stdout


def profile_of(name: str):
    from clusterjupyter.profiles import get_profile

    return get_profile(name)


@pytest.mark.ssh
def test_sync_builds_a_matching_environment_and_the_refused_cell_runs(sh, env):
    refused(sh, "syncold")
    out = env_line(sh, "sync syncold --packages numpy")
    entry = envsync.active(profile_of("syncold"))
    assert entry and "built" in out and entry["dir"] in out
    assert f"numpy=={numpy.__version__}" in entry["requirements"]
    assert (Path(entry["dir"]) / ".complete").exists()
    assert "Successfully installed" in (Path(entry["dir"]) / "build.log").read_text()
    value = ok(sh, "%%cluster syncold\nimport os, sys\nexe = sys.executable\n"
                   "conn = os.environ.get('SSH_CONNECTION', '')\nimport numpy\n"
                   "nv = numpy.__version__\nb = a * 2\nint(b.sum())")
    assert value == 30 and sh.user_ns["nv"] == numpy.__version__ and sh.user_ns["conn"]
    assert sh.user_ns["exe"] == entry["python"]


@pytest.mark.ssh
def test_a_second_sync_and_the_next_jobs_reuse_the_environment(sh, env):
    entry = envsync.active(profile_of("syncold"))
    log = Path(entry["dir"]) / "build.log"
    stamp = log.stat().st_mtime
    t0 = time.perf_counter()
    out = env_line(sh, "sync syncold --packages numpy")
    seconds = time.perf_counter() - t0
    assert "already there" in out and log.stat().st_mtime == stamp
    print(f"second sync: {seconds:.3f} s")     # measured, not asserted
    ok(sh, "%%cluster syncold\nimport sys\nexe2 = sys.executable")
    assert sh.user_ns["exe2"] == entry["python"]


@pytest.mark.ssh
def test_env_sync_profile_option_uses_the_environment_of_the_same_requirements(sh, env):
    # numpy is missing from this profile's own interpreter; "sync" finds the environment of
    # the same requirements (built above) before the first job, and the job runs in it
    value = ok(sh, "%%cluster autosync\nimport sys\nexe3 = sys.executable\nint(a.sum())")
    assert value == 15
    entry = envsync.active(profile_of("autosync"))
    assert entry and sh.user_ns["exe3"] == entry["python"]
    assert entry["digest"] == envsync.active(profile_of("syncold"))["digest"]


@pytest.mark.ssh
def test_health_check_shows_the_versions_and_the_synced_environment(sh, env):
    from clusterjupyter.widgets.health import check_profile

    answer = check_profile("old")
    step = next(s for s in answer["steps"] if s["name"] == "environment")
    assert step["ok"] and "1 refusing" in step["detail"] or "refusing" in step["detail"]
    row = next(r for r in answer["environment"]["rows"] if r["package"] == "numpy")
    assert row["kernel"] == numpy.__version__ and row["cluster"].startswith("1.")
    assert row["refuse"] and "numpy" in answer["environment"]["table"]
    answer = check_profile("syncold")
    assert answer["environment"]["synced"]["current"] is True
    assert "current" in answer["steps"][-1]["detail"]
    cli = subprocess.run([sys.executable, "-m", "clusterjupyter.cli", "check", "old"],
                         capture_output=True, text=True, timeout=120)
    assert "numpy" in cli.stdout and "environment" in cli.stdout


@pytest.mark.ssh
def test_changed_requirements_build_another_environment_and_prune_removes_the_old(sh, env):
    first = envsync.active(profile_of("syncold"))
    env_line(sh, "sync syncold --packages packaging")     # small: a quick build
    second = envsync.active(profile_of("syncold"))
    assert second["digest"] != first["digest"]
    assert any(r.startswith("packaging==") for r in second["requirements"])
    listed = env_line(sh, "list syncold")
    assert first["digest"] in listed and f"* {second['digest']}" in listed
    # the first one is still autosync's: kept until that profile lets it go
    assert first["dir"] not in env_line(sh, "prune syncold")
    assert "run with" in env_line(sh, "off autosync")
    out = env_line(sh, "prune syncold")
    assert first["dir"] in out and not Path(first["dir"]).exists()
    assert Path(second["dir"], ".complete").exists()
    assert first["digest"] not in env_line(sh, "list syncold")


@pytest.mark.ssh
def test_offline_sync_ships_wheels_content_addressed_once(sh, env):
    out = env_line(sh, "sync offline --packages packaging")
    first = envsync.active(profile_of("offline"))
    wheels = Path(first["dir"], "wheels")
    links = sorted(wheels.iterdir())
    assert links and all(p.is_symlink() and p.resolve().parent.name == "blobs" for p in links)
    assert "--no-index" in Path(first["dir"], "build.log").read_text()
    assert f"wheels: {len(links)} ({len(links)} sent" in out
    out = env_line(sh, "sync offline --packages packaging,tomli-w")
    second = envsync.active(profile_of("offline"))
    assert second["digest"] != first["digest"]
    assert f"(1 sent, {len(links)} already there)" in out
    ok(sh, "%%cluster offline\nimport sys, packaging\nexe4 = sys.executable")
    assert sh.user_ns["exe4"] == second["python"]


def test_ship_runner_off_without_the_package_says_what_to_set(sh, env, venvs, monkeypatch):
    from helpers import write_profiles

    profiles = dict(env.profiles)
    profiles["noship"] = {"scheduler": "local", "python": venvs["patch"], "ship_runner": False,
                          "workdir": str(env.base / "noship")}
    write_profiles(env.base / "cj", profiles)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir("/")
    envprobe.forget()
    res = run(sh, "%%cluster noship\nb = 1")
    assert "ship_runner = true" in str(res.error_in_exec)


def test_env_command_names_its_actions(sh):
    res = run(sh, "%cluster env build old")
    assert res.error_in_exec is not None and "sync|list|prune|off|log" in str(res.error_in_exec)


def test_a_builder_is_alive_elsewhere_or_dead_by_its_pid_file(tmp_path):
    """The login-host builder check against real processes on this machine."""
    import signal

    from clusterjupyter import envbuild
    from clusterjupyter.transports.local import LocalTransport

    t, d = LocalTransport(), tmp_path / "env"
    d.mkdir()
    assert envbuild.builder(t, str(d)).state == "unknown"          # not started yet
    proc = subprocess.Popen(["sh", "-c", "sleep 60", "sh", str(d)], start_new_session=True)
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    (d / "build.pid").write_text(f"{host} {proc.pid} {proc.pid}\n")
    assert envbuild.builder(t, str(d)) == ("alive", host, str(proc.pid))
    (d / "build.pid").write_text(f"other-login-host {proc.pid} {proc.pid}\n")
    assert envbuild.builder(t, str(d)).state == "elsewhere"
    (d / "build.pid").write_text(f"{host} {os.getpid()} {os.getpid()}\n")   # a pid reused
    assert envbuild.builder(t, str(d)).state == "dead"
    (d / ".failed").unlink()
    (d / "build.pid").write_text(f"{host} {proc.pid} {proc.pid}\n")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert envbuild.builder(t, str(d)) == ("dead", host, str(proc.pid))
    assert (d / ".failed").exists() and "gone without finishing" in (d / "build.log").read_text()
    assert envbuild.builder(t, str(d)).state == "ended"               # marked once


def _sync_killed_mid_build(workdir: Path, also_the_command: bool = False, before: str = ""):
    """``clusterjupyter env sync killed`` in its own process; once the build's process runs pip
    there, SIGKILL it (and the command too: a kernel gone with it); ``before``: the pid of a
    build killed earlier in the same directory. ``(exit code, stderr, pid)``."""
    import signal

    from helpers import wait_for

    cmd = subprocess.Popen([sys.executable, "-m", "clusterjupyter.cli", "env", "sync", "killed",
                            "--packages", "packaging"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)

    def building():
        for pidfile in workdir.glob("envs/*/build.pid"):
            log = pidfile.with_name("build.log")
            words = pidfile.read_text().split()
            if len(words) == 3 and words[1] != before and log.exists() \
                    and "pip install" in log.read_text():
                return words
        return None

    host, pid, pgid = wait_for(building, 120, "the build to run pip", step=0.02)
    assert pid == pgid                      # its own process group, with pip in it
    if also_the_command:
        cmd.kill()
    os.kill(int(pid), signal.SIGKILL)
    _, err = cmd.communicate(timeout=120)
    return cmd.returncode, err, int(pid)


@pytest.mark.ssh
def test_a_login_build_whose_process_is_killed_fails_the_sync_and_the_next_rebuilds(sh, env):
    workdir = Path(env.profiles["killed"]["workdir"])
    code, err, pid = _sync_killed_mid_build(workdir)
    assert code == 1, err
    d = next(workdir.glob("envs/*"))
    assert (d / ".failed").exists() and not (d / ".complete").exists()
    assert f"the environment build's process {pid} on " in err and "ended without" in err
    assert "clusterjupyter: plan: " in err and "pip install" in err          # the log's tail
    assert f"process {pid} on " in (d / "build.log").read_text().splitlines()[-1]
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)                   # what it left running (pip) was stopped
    assert " failed " in env_line(sh, "list killed")
    # the next sync builds again; its builder dies with the command: nothing marks it failed,
    # and the sync after finds the dead builder and builds again
    code, _, pid = _sync_killed_mid_build(workdir, True, str(pid))
    assert code == -9 and not (d / ".failed").exists()
    out = env_line(sh, "sync killed --packages packaging")
    assert f"(process {pid} on " in out and "ended without finishing it; building it again" in out
    entry = envsync.active(profile_of("killed"))
    assert entry["dir"] == str(d) and (d / ".complete").exists()
    assert "gone without finishing" not in (d / "build.log").read_text()
    ok(sh, "%%cluster killed\nimport sys, packaging\nexe9 = sys.executable")
    assert sh.user_ns["exe9"] == entry["python"]


# -- local and editable packages ----------------------------------------------------------------

@pytest.fixture(scope="module")
def localpkg(tmp_path_factory, sh):
    """A small project installed editable (pip install -e) into a prefix on the kernel's path:
    a distribution whose direct_url.json says editable, found by importlib.metadata."""
    import site

    from clusterjupyter import envguard

    base = tmp_path_factory.mktemp("localpkg")
    src = base / "src"
    (src / "src" / "cjlocalpkg").mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"'
        '\n[project]\nname = "cj-localpkg"\nversion = "0.1.0"\ndependencies = ["tomli-w"]\n')
    (src / "src" / "cjlocalpkg" / "__init__.py").write_text("import tomli_w\nVALUE = 1\n")
    prefix = base / "prefix"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-deps", "--prefix", str(prefix), "-e", str(src)], check=True)
    sitedir = str(next(prefix.glob("lib/python*/site-packages")))
    before = list(sys.path)
    site.addsitedir(sitedir)
    envguard.forget_kernel_versions()
    yield src
    sys.path[:] = before
    sys.modules.pop("cjlocalpkg", None)
    envguard.forget_kernel_versions()


def test_the_editable_package_is_installed_editable_here(localpkg):
    from importlib import metadata

    doc = metadata.distribution("cj-localpkg").read_text("direct_url.json")
    assert '"editable": true' in doc and str(localpkg) in doc


def test_a_local_directory_or_wheel_file_install_travels_as_that_wheel(localpkg, tmp_path,
                                                                      monkeypatch):
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "w"), str(localpkg)],
                   check=True)
    whl = next((tmp_path / "w").glob("cj_localpkg-*.whl"))
    for how, source in (("dir", str(localpkg)), ("file", str(whl))):
        prefix = tmp_path / how
        subprocess.run([*pip, "install", "--no-deps", "--prefix", str(prefix), source],
                       check=True)
        monkeypatch.syspath_prepend(str(next(prefix.glob("lib/python*/site-packages"))))
        (local,) = envreqs.kernel_requirements(["cj-localpkg"]).local
        assert (local.source, local.editable) == (source, False)
        assert f"(local: {source})" in local.describe()
    assert envreqs.local_wheel(local) == str(whl)      # a wheel file is shipped as it is


#: run on the cluster: the package's version and installed file as the job's environment has them
INSTALLED = ("from importlib import metadata\ntry:\n    dist = metadata.distribution('cj-localpkg')"
             "\n    init = next(f for f in dist.files if f.name == '__init__.py')\n"
             "    installed = (str(dist.locate_file(init)), init.read_text())\n"
             "except metadata.PackageNotFoundError:\n    installed = None\n")


@pytest.mark.ssh
def test_sync_ships_an_editable_package_as_a_wheel_built_here(sh, env, localpkg, capfd):
    # its source travels with the job (a local module), but not its dependency nor its install:
    # the guard warns (the package may import it lazily), the job fails there
    ok(sh, "import cjlocalpkg")
    capfd.readouterr()
    res = run(sh, "%%cluster synclocal\nimport os, cjlocalpkg\npid = os.getpid()\n"
                  + INSTALLED)
    assert "No module named 'tomli_w'" in str(res.error_in_exec)
    warning = next(x for x in capfd.readouterr().err.splitlines() if "versions differ" in x)
    assert "tomli-w" in warning and "missing there (needed by cj-localpkg)" in warning
    assert "`%cluster env sync synclocal` installs what is missing" in warning
    out = env_line(sh, "sync synclocal")         # the modules this kernel's cells used
    entry = envsync.active(profile_of("synclocal"))
    assert "local wheel built here: cj-localpkg 0.1.0 (editable" in out
    assert "building a wheel of cj-localpkg" in out and "wheels: 1 (1 sent, 0" in out
    assert any(r.startswith("cj-localpkg==0.1.0 (local ") for r in entry["requirements"])
    wheel = next(Path(entry["dir"], "wheels").iterdir())
    assert wheel.is_symlink() and wheel.resolve().parent.name == "blobs"
    ok(sh, "%%cluster synclocal\nimport os, sys, cjlocalpkg\npid = os.getpid()\n"
           "exe5 = sys.executable\nv = cjlocalpkg.VALUE\n" + INSTALLED)
    assert sh.user_ns["v"] == 1 and sh.user_ns["exe5"] == entry["python"]
    assert sh.user_ns["pid"] != os.getpid()
    # installed from the wheel into the environment there
    path, text = sh.user_ns["installed"]
    assert path.startswith(entry["dir"]) and text.endswith("VALUE = 1\n")
    listed = env_line(sh, "list synclocal")
    assert "cj-localpkg (local wheel cj_localpkg-0.1.0-" in listed and "log: " in listed


@pytest.mark.ssh
def test_an_unchanged_local_wheel_is_not_built_nor_sent_again(sh, env, localpkg):
    first = envsync.active(profile_of("synclocal"))
    out = env_line(sh, "sync synclocal --packages cj-localpkg,tomli-w")
    second = envsync.active(profile_of("synclocal"))
    assert second["digest"] != first["digest"]
    assert "building a wheel" not in out and "wheels: 1 (0 sent, 1 already there)" in out
    # the source changed: another wheel, another environment
    (localpkg / "src" / "cjlocalpkg" / "__init__.py").write_text("import tomli_w\nVALUE = 2\n")
    out = env_line(sh, "sync synclocal --packages cj-localpkg,tomli-w")
    third = envsync.active(profile_of("synclocal"))
    assert third["digest"] not in (first["digest"], second["digest"])
    assert "building a wheel of cj-localpkg" in out and "wheels: 1 (1 sent, 0" in out
    ok(sh, "%%cluster synclocal\nimport cjlocalpkg\n" + INSTALLED)
    path, text = sh.user_ns["installed"]
    assert path.startswith(third["dir"]) and text.endswith("VALUE = 2\n")


# -- building as a job on SLURM -----------------------------------------------------------------

@pytest.mark.slurm
def test_sync_builds_as_a_slurm_job_and_the_refused_cell_then_runs(sh, env):
    text = refused(sh, "slurmjob")
    assert "numpy" in text and "1.26.4" in text and "%cluster env sync slurmjob" in text
    out = env_line(sh, "sync slurmjob --packages numpy")
    entry = envsync.active(profile_of("slurmjob"))
    build_job = Path(entry["dir"], "job.id").read_text().strip()
    assert f"the build runs as slurm job {build_job}" in out
    assert f"build job {build_job}: " in out            # its queue state, followed
    log = Path(entry["dir"], "build.log").read_text()
    assert f", job {build_job}, " in log and "clusterjupyter: built" in log
    assert "clusterjupyter: plan: " in log
    value = ok(sh, "%%cluster slurmjob\nimport os, sys, numpy\njid = os.environ['SLURM_JOB_ID']"
                   "\nexe6 = sys.executable\nnv6 = numpy.__version__\nint((a * 2).sum())")
    assert value == 30 and sh.user_ns["exe6"] == entry["python"]
    assert sh.user_ns["nv6"] == numpy.__version__ and sh.user_ns["jid"] != build_job


@pytest.mark.slurm
def test_a_second_slurm_job_reuses_the_environment_built_as_a_job(sh, env):
    entry = envsync.active(profile_of("slurmjob"))
    log = Path(entry["dir"], "build.log")
    stamp = log.stat().st_mtime
    first = sh.user_ns["jid"]
    ok(sh, "%%cluster slurmjob\nimport os, sys\njid2 = os.environ['SLURM_JOB_ID']\n"
           "exe7 = sys.executable")
    assert sh.user_ns["exe7"] == entry["python"] and sh.user_ns["jid2"] != first
    out = env_line(sh, "sync slurmjob --packages numpy")
    assert "already there" in out and "slurm job" not in out and log.stat().st_mtime == stamp
    listed = env_line(sh, "list slurmjob")
    build_job = Path(entry["dir"], "job.id").read_text().strip()
    assert f"* {entry['digest']}" in listed and f"built as job {build_job}; log: {log}" in listed
    assert "clusterjupyter: built" in listed
    whole = env_line(sh, "log slurmjob")
    assert whole.startswith(f"{log}:") and "Successfully installed" in whole
    assert f", job {build_job}, " in whole
    from clusterjupyter.widgets.health import check_profile

    step = next(s for s in check_profile("slurmjob")["steps"] if s["name"] == "environment")
    assert f"built as job {build_job}" in step["detail"] and str(log) in step["detail"]


@pytest.mark.slurm
def test_a_build_job_that_dies_fails_the_sync_with_its_log(sh, env):
    res = run(sh, "%cluster env sync slurmjobfail --packages dill")
    text = str(res.error_in_exec)
    d = next(Path(env.profiles["slurmjobfail"]["workdir"], "envs").iterdir())
    build_job = (d / "job.id").read_text().strip()
    assert f"the build job {build_job} ended failed" in text and "scheduler.log" in text
    assert f", job {build_job}, " in text                        # the log's tail
    assert (d / ".failed").exists()
    listed = env_line(sh, "list slurmjobfail")
    assert " failed " in listed and "built as job" in listed
    assert f", job {build_job}, " in env_line(sh, "log slurmjobfail")   # the failed build's


@pytest.mark.slurm
def test_a_refused_build_job_leaves_nothing_a_later_sync_would_wait_for(sh, env, venvs):
    from helpers import write_profiles

    profiles = dict(env.profiles)
    profiles["slurmnopart"] = {**env.profiles["slurmjob"], "python": venvs["nonumpy"],
                               "workdir": str(env.base / "nopart"),
                               "resources": {"partition": "no-such-partition", "time": "5m"}}
    write_profiles(env.base / "cj", profiles)
    for _ in range(2):                      # refused again, not waited for
        res = run(sh, "%cluster env sync slurmnopart --packages packaging")
        assert "partition" in str(res.error_in_exec).lower()
        assert list(Path(env.base, "nopart", "envs").iterdir()) == []


@pytest.mark.sge
def test_sync_builds_as_a_grid_engine_job(sh, env, venvs, monkeypatch):
    from helpers import write_profiles

    sge = ensure("sge")["sge"]
    monkeypatch.delenv("SGE_ROOT", raising=False)     # only command_env provides it
    profiles = dict(env.profiles)
    profiles["sgejob"] = {
        "scheduler": "sge", "python": venvs["nonumpy"], "env_build": "job",
        "workdir": str(env.base / "sgejob"), "resources": {"partition": sge["queue"]},
        "scheduler_options": {"bin_dir": "/usr/lib/gridengine", "pe": sge["pe"],
                              "command_env": {"SGE_ROOT": sge["sge_root"],
                                              "SGE_CELL": sge["sge_cell"]}}}
    write_profiles(env.base / "cj", profiles)
    out = env_line(sh, "sync sgejob --packages packaging")
    entry = envsync.active(profile_of("sgejob"))
    build_job = Path(entry["dir"], "job.id").read_text().strip()
    assert f"the build runs as sge job {build_job}" in out
    assert f", job {build_job}, " in Path(entry["dir"], "build.log").read_text()
    ok(sh, "%%cluster sgejob\nimport os, sys, packaging\nsge_job = os.environ['JOB_ID']\n"
           "exe8 = sys.executable")
    assert sh.user_ns["exe8"] == entry["python"] and sh.user_ns["sge_job"] != build_job


@pytest.mark.slurm
def test_a_scheduler_that_does_not_answer_once_does_not_stop_the_build(sh, env, venvs,
                                                                      tmp_path):
    from helpers import write_profiles

    # squeue fails at its first call (a busy controller), then is the real one
    flaky = tmp_path / "squeue"
    flaky.write_text(f'#!/bin/sh\n[ -e {tmp_path}/once ] || {{ touch {tmp_path}/once; echo '
                     f'"squeue: error: slurm_receive_msg: Socket timed out" >&2; exit 1; }}\n'
                     f'exec squeue "$@"\n')
    flaky.chmod(0o755)
    profiles = dict(env.profiles)
    profiles["slurmflaky"] = {**env.profiles["slurmjob"], "workdir": str(env.base / "flaky"),
                              "python": venvs["nonumpy"],
                              "scheduler_options": {"squeue": str(flaky)}}
    write_profiles(env.base / "cj", profiles)
    out = env_line(sh, "sync slurmflaky --packages packaging")
    assert "the scheduler did not answer (squeue: error: slurm_receive_msg" in out
    entry = envsync.active(profile_of("slurmflaky"))
    assert Path(entry["dir"], ".complete").exists() and "built" in out
