"""The job's surroundings: working directory, staged files in and out, local modules.

On the local backend the job runs in the kernel's working directory (a real shell, a real job
process). Over the project's real loopback sshd the profile does not share files, so the files
travel: the job runs in its own directory on the SSH host and what it writes comes back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from clusterjupyter.api import list_jobs
from clusterjupyter._workdir import rewrite_source, safe_relpath
from clusterjupyter.errors import IntegrityError, ProfileError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.profiles import Profile
from clusterjupyter.staging import candidates, is_local, map_path, parse_size, placement

from helpers import (close_shell_and_backends, ensure, last_job, make_env, new_module_shell,
                     ssh_profile, write_profiles)
from helpers import started_doc as started
from shells import ok, run


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A notebook directory (the kernel's working directory) with data and a local module."""
    d = tmp_path / "project"
    (d / "data").mkdir(parents=True)
    (d / "data.txt").write_text("hello from the notebook's directory\n")
    (d / "data" / "x.csv").write_text("a,b\n1,2\n3,4\n")
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def src(tmp_path, monkeypatch):
    """A project source directory on the kernel's sys.path (not the working directory), with a
    module and a package, as ``sys.path.append('../src')`` or an editable install gives."""
    s = tmp_path / "src"
    (s / "mypkg").mkdir(parents=True)
    (s / "helpers_cj.py").write_text("def double(x):\n    return 2 * x\n\n"
                                     "class Box:\n    def __init__(self, v):\n"
                                     "        self.v = v\n")
    (s / "mypkg" / "__init__.py").write_text("from .core import triple\n")
    (s / "mypkg" / "core.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(s))
    for name in ("helpers_cj", "mypkg", "mypkg.core"):
        sys.modules.pop(name, None)
    yield s
    for name in ("helpers_cj", "mypkg", "mypkg.core"):
        sys.modules.pop(name, None)


# -- decisions (pure) ---------------------------------------------------------------------------

def test_where_a_job_runs_follows_the_profile():
    cwd = "/home/me/proj/sub"
    assert placement(Profile.from_dict("l", {}), cwd) == cwd
    assert placement(Profile.from_dict("s", {"scheduler": "slurm"}), cwd) == cwd
    assert placement(Profile.from_dict("r", {"host": "hpc"}), cwd) is None
    assert placement(Profile.from_dict("k", {"scheduler": "kubernetes"}), cwd) is None
    assert placement(Profile.from_dict("n", {"shared_fs": False}), cwd) is None
    assert placement(Profile.from_dict("y", {"host": "h", "shared_fs": True}), cwd) == cwd
    mapped = Profile.from_dict("m", {"host": "hpc", "path_map": {
        "/home/me": "/cluster/me", "/home/me/proj": "/scratch/proj"}})
    assert placement(mapped, cwd) == "/scratch/proj/sub"       # the longest prefix wins
    assert placement(mapped, "/elsewhere") is None
    assert map_path("/home/me", {"/home/me": "/c/me"}) == "/c/me"
    assert map_path("/home/media", {"/home/me": "/c/me"}) is None


def test_profile_staging_fields_are_validated():
    for body, field in (({"stage_limit": "lots"}, "stage_limit"),
                        ({"return_limit": "-"}, "return_limit"),
                        ({"stage_max_files": 0}, "stage_max_files"),
                        ({"path_map": {"rel/dir": "/x"}}, "path_map"),
                        ({"shared_fs": "yes"}, "shared_fs"),
                        ({"stage": 3}, "stage")):
        with pytest.raises(ProfileError) as e:
            Profile.from_dict("p", body)
        assert e.value.field == field, body
    assert parse_size("1.5G") == 3 << 29 and parse_size("512K") == 512 << 10
    assert parse_size(100) == 100


def test_paths_coming_back_must_be_plain_and_relative():
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "./a", "", "a/", "a\\..\\b"):
        with pytest.raises(IntegrityError):
            safe_relpath(bad)
    assert safe_relpath("out/fig.svg") == "out/fig.svg"


def test_candidates_and_literal_rewriting():
    import pathlib

    def load():
        return open("inside_function.csv")

    src = ("import pandas as pd\ndf = pd.read_csv('data/x.csv')\n"
           "get_ipython().system('head -n 2 data.txt')\nname = f'{x}.txt'\n")
    found = candidates(src, {"p": pathlib.Path("in/put.bin"), "load": _as_main(load),
                             "many": [pathlib.Path("a.txt")]})
    for s in ("data/x.csv", "head", "data.txt", "in/put.bin", "inside_function.csv", "a.txt"):
        assert s in found, s
    assert "." not in found and "/" not in found
    out = rewrite_source("a = open('/abs/f.txt')  # é\nb = '/abs/f.txt'.upper()\n",
                         {"/abs/f.txt": "/job/work/abs/f.txt"})
    assert out == ("a = open('/job/work/abs/f.txt')  # é\n"
                   "b = '/job/work/abs/f.txt'.upper()\n")


def test_what_a_staged_job_takes(tmp_path):
    from clusterjupyter.staging import StagingError, make_plan

    cwd = tmp_path / "nb"
    (cwd / "data" / "sub").mkdir(parents=True)
    (cwd / "data" / "sub" / "a.csv").write_text("1")
    (cwd / "notes.txt").write_text("n")
    (cwd / "results").mkdir()
    (tmp_path / "other.txt").write_text("o")
    far = Profile.from_dict("far", {"host": "hpc", "stage": ["notes.txt"]})
    src = ("import os\nos.listdir('data')\nopen('../other.txt')\nos.listdir('/tmp')\n"
           f"os.listdir('.')\nopen({str(tmp_path / 'other.txt')!r})\n"
           "df.to_csv('results/out.csv')\ncolumn = 'name'\n")
    plan = make_plan(far, src, {}, {}, cwd=str(cwd))
    assert plan.staged and plan.base == str(tmp_path)
    assert sorted(plan.files) == ["nb/data/sub/a.csv", "nb/notes.txt", "other.txt"]
    assert "nb/results" in plan.dirs and "nb/data" in plan.dirs
    assert plan.rewrite == {str(tmp_path / "other.txt"): "other.txt"}
    doc = plan.manifest(b"k" * 32, "job")
    assert doc["cwd"] == "nb" and doc["files"]["other.txt"]["size"] == 1
    # the same cell where files are shared takes nothing
    assert not make_plan(Profile.from_dict("here", {}), src, {}, {}, cwd=str(cwd)).files
    with pytest.raises(StagingError, match="--stage-limit"):
        make_plan(far, src, {}, {}, stage_limit="1", cwd=str(cwd))


def _as_main(f):
    f.__module__ = "__main__"
    return f


def test_local_modules_are_told_from_installed_ones(src):
    import json as stdlib_module

    import IPython

    import helpers_cj
    assert is_local(helpers_cj)
    assert not is_local(stdlib_module) and not is_local(IPython)


# -- local backend: the kernel's working directory ------------------------------------------------

def test_local_job_runs_in_the_kernels_working_directory(shell, project, capsys):
    value = ok(shell, "%%cluster\nimport os\nprint(open('data.txt').read(), end='')\n"
                      "import pandas as pd\nn = len(pd.read_csv('./data/x.csv'))\n"
                      "import matplotlib\nmatplotlib.use('svg')\nimport matplotlib.pyplot as plt\n"
                      "plt.plot([1, 2])\nplt.savefig('fig.svg')\nplt.close('all')\n"
                      "where, pid = os.getcwd(), os.getpid()\nn")
    assert value == 2
    assert "hello from the notebook's directory" in capsys.readouterr().out
    rec = last_job()
    assert shell.user_ns["where"] == str(project)
    assert shell.user_ns["pid"] == started(rec)["pid"] != os.getpid()
    # the next (plain) cell sees the figure the job wrote
    svg = ok(shell, "from IPython.display import SVG\nSVG(filename='fig.svg')")
    assert "<svg" in svg.data
    # the runner's own files stay in the job directory
    assert sorted(p.name for p in project.iterdir()) == ["data", "data.txt", "fig.svg"]
    assert Path(JobPaths.from_dir(rec.job_dir).state).exists()


def test_local_job_imports_modules_from_the_kernels_sys_path(shell, project, src):
    ok(shell, "import helpers_cj\nfrom mypkg import triple")
    ok(shell, "%%cluster\nimport os\nr = (helpers_cj.double(2), triple(3))\n"
              "f = helpers_cj.__file__\npid = os.getpid()")
    assert shell.user_ns["r"] == (4, 9)
    assert shell.user_ns["f"] == str(src / "helpers_cj.py")
    assert shell.user_ns["pid"] != os.getpid()


# -- over the real loopback sshd: staging -------------------------------------------------------

@pytest.fixture(scope="module")
def ssh_env(tmp_path_factory):
    ssh = ensure("sshd")["ssh"]
    remote = tmp_path_factory.mktemp("staging-remote")
    laptop, mirror = remote / "laptop", remote / "mirror"
    laptop.mkdir()
    mirror.mkdir()
    profiles = {"far": ssh_profile(ssh, remote / "work"),
                "mapped": ssh_profile(ssh, remote / "work",
                                      path_map={str(laptop): str(mirror)}),
                "far_small": ssh_profile(ssh, remote / "work", stage_max_files=3,
                                         return_limit="1K")}
    e, mp = make_env(tmp_path_factory, "staging", profiles)
    e.remote = remote  # type: ignore[attr-defined]
    yield e
    close_shell_and_backends()
    mp.undo()


@pytest.fixture
def sh(ssh_env, kernel_settings):
    return new_module_shell()


@pytest.mark.ssh
def test_files_travel_to_the_ssh_host_and_back(sh, ssh_env, project):
    with capture_output() as cap:
        ok(sh, "%%cluster far\nimport os\ntext = open('data.txt').read()\n"
               "lines = open('data/x.csv').read().splitlines()\n"
               "os.makedirs('out', exist_ok=True)\n"
               "open('out/table.csv', 'w').write('x\\n' + str(len(lines)))\n"
               "import matplotlib\nmatplotlib.use('svg')\nimport matplotlib.pyplot as plt\n"
               "plt.plot([1, 2])\nplt.savefig('fig.svg')\nplt.close('all')\n"
               "where, pid = os.getcwd(), os.getpid()\nhead = !head -n 1 data.txt")
    rec = last_job()
    assert list(sh.user_ns["head"]) == ["hello from the notebook's directory"]
    # provenance: another process, in the job's own directory on the SSH host
    assert sh.user_ns["pid"] == started(rec)["pid"] != os.getpid()
    where = sh.user_ns["where"]
    assert where == JobPaths.from_dir(rec.job_dir).work
    assert where.startswith(str(ssh_env.remote / "work" / "jobs"))
    assert sh.user_ns["text"] == "hello from the notebook's directory\n"
    assert sh.user_ns["lines"] == ["a,b", "1,2", "3,4"]
    # what the job wrote came back into the kernel's working directory, in one notice
    assert (project / "out" / "table.csv").read_text() == "x\n3"
    assert (project / "fig.svg").read_text().lstrip().startswith("<?xml")
    notices = [ln for ln in cap.stderr.splitlines() if "files from job" in ln]
    assert len(notices) == 1 and "out/table.csv" in notices[0] and "fig.svg" in notices[0]
    # the next plain cell uses the file the job wrote
    assert "<svg" in ok(sh, "from IPython.display import SVG\nSVG(filename='fig.svg')").data


@pytest.mark.ssh
def test_unchanged_file_is_not_sent_again(sh, ssh_env, project):
    big = project / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    ok(sh, "%%cluster far\nsize = len(open('big.bin', 'rb').read())")
    assert sh.user_ns["size"] == 1 << 20
    import hashlib

    blob = ssh_env.remote / "work" / "blobs" / hashlib.sha256(big.read_bytes()).hexdigest()
    first = blob.stat()
    ok(sh, "%%cluster far\nsize2 = len(open('big.bin', 'rb').read())")
    again = blob.stat()
    assert sh.user_ns["size2"] == 1 << 20
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    # a changed file is sent (under its new address)
    big.write_bytes(b"changed")
    ok(sh, "%%cluster far\nsmall = open('big.bin', 'rb').read()")
    assert sh.user_ns["small"] == b"changed"


@pytest.mark.ssh
def test_a_large_staged_file_changed_in_place_is_sent_again(sh, ssh_env, project):
    import hashlib

    big = project / "big.dat"
    big.write_bytes(b"\1" * (9 << 20))         # large: laid out as a link to its blob
    blob = ssh_env.remote / "work" / "blobs" / hashlib.sha256(big.read_bytes()).hexdigest()
    ok(sh, "%%cluster far\nopen('big.dat', 'ab').write(b'+')")
    assert big.stat().st_size == (9 << 20) + 1      # came back
    assert not blob.exists()                        # the changed blob is never used again
    big.write_bytes(b"\1" * (9 << 20))
    ok(sh, "%%cluster far\nsize = len(open('big.dat', 'rb').read())")
    assert sh.user_ns["size"] == 9 << 20 and blob.exists()


@pytest.mark.ssh
def test_a_local_file_changed_meanwhile_is_not_overwritten(sh, ssh_env, project):
    log = project / "log.txt"
    log.write_text("start\n")
    ok(sh, "%%cluster far --async --job j\nimport time\ntime.sleep(1.5)\n"
           "open('log.txt', 'a').write('from the job\\n')")
    log.write_text("start\nedited here meanwhile\n")
    assert sh.user_ns["j"].wait(120).value == "completed"
    with capture_output() as cap:
        ok(sh, "pass")      # results of --async jobs arrive between cells
    job_id = sh.user_ns["j"].id
    assert log.read_text() == "start\nedited here meanwhile\n"
    side = project / f"log.job-{job_id[:8]}.txt"
    assert side.read_text() == "start\nfrom the job\n"
    assert "kept yours" in cap.stderr and side.name in cap.stderr


@pytest.mark.ssh
def test_files_come_back_after_a_kernel_restart(sh, ssh_env, project):
    ok(sh, "%%cluster far --async --job j3\nopen('later.txt', 'w').write('after a restart')")
    job_id = sh.user_ns["j3"].id
    fresh = new_module_shell()           # the kernel restarted: only the journal knows the job
    assert "j3" not in fresh.user_ns
    with capture_output() as cap:
        ok(fresh, f"%cluster result {job_id[:8]}")
    assert (project / "later.txt").read_text() == "after a restart"
    assert "later.txt" in cap.stderr


@pytest.mark.ssh
def test_unchanged_local_file_is_updated(sh, ssh_env, project):
    (project / "counter.txt").write_text("1")
    (project / "results").mkdir()
    ok(sh, "%%cluster far\nn = int(open('counter.txt').read())\n"
           "open('counter.txt', 'w').write(str(n + 1))\n"
           "open('results/new.txt', 'w').write('into a directory that exists here')")
    assert (project / "counter.txt").read_text() == "2"
    assert (project / "results" / "new.txt").read_text() == "into a directory that exists here"


@pytest.mark.ssh
def test_over_the_limits_is_refused_before_submission(sh, ssh_env, project):
    (project / "four_k.bin").write_bytes(b"x" * 4096)
    before = len(list_jobs(limit=1000))
    r = run(sh, "%%cluster far --stage-limit 1K\ngot = open('four_k.bin', 'rb').read()")
    assert isinstance(r.error_in_exec, UsageError)
    msg = str(r.error_in_exec)
    assert "4.0 KiB" in msg and "--stage-limit 4K" in msg and "stage_limit" in msg
    for i in range(5):
        (project / "data" / f"part{i}.csv").write_text("1\n")
    r = run(sh, "%%cluster far_small\nimport os\ngot = os.listdir('data')")
    assert isinstance(r.error_in_exec, UsageError)
    assert "stage_max_files" in str(r.error_in_exec)
    assert "got" not in sh.user_ns and len(list_jobs(limit=1000)) == before
    # --stage of a path that does not exist is an error too, before submission
    r = run(sh, "%%cluster far --stage nothing-here\n1")
    assert isinstance(r.error_in_exec, UsageError) and "nothing-here" in str(r.error_in_exec)


@pytest.mark.ssh
def test_files_over_the_return_limit_stay_on_the_cluster(sh, ssh_env, project):
    with capture_output() as cap:
        ok(sh, "%%cluster far_small\nopen('small.txt', 'w').write('s')\n"
               "open('large.txt', 'w').write('L' * 4000)")
    assert (project / "small.txt").read_text() == "s"
    assert not (project / "large.txt").exists()
    assert "return_limit" in cap.stderr and "large.txt" in cap.stderr
    rec = last_job()
    left = Path(JobPaths.from_dir(rec.job_dir).work) / "large.txt"
    assert left.read_text() == "L" * 4000       # nothing is lost
    assert f"%cluster files {rec.id[:8]}" in cap.stderr
    with capture_output() as cap:
        ok(sh, f"%cluster files {rec.id[:8]}")
    assert (project / "large.txt").read_text() == "L" * 4000
    assert "wrote large.txt" in cap.stderr


@pytest.mark.ssh
def test_staged_explicitly_and_by_path_values(sh, ssh_env, project, tmp_path):
    outside = tmp_path / "shared-data"
    outside.mkdir()
    (outside / "ref.txt").write_text("reference")
    (outside / "abs.txt").write_text("by an absolute Path")
    (outside / "fn.txt").write_text("read by a notebook function")
    ok(sh, "from pathlib import Path\np = Path('data') / 'x.csv'\n"
           f"q = Path({str(outside / 'abs.txt')!r})\n"
           f"def read_fn():\n    return open({str(outside / 'fn.txt')!r}).read()")
    ok(sh, f"%%cluster far --stage {outside / 'ref.txt'}\nimport os\n"
           "rows = p.read_text().count('\\n')\n"
           f"ref = open('{outside / 'ref.txt'}').read()\n"
           "listing = sorted(os.listdir('../shared-data'))\nq_text = q.read_text()\n"
           "fn_text = read_fn()\nwhere = os.getcwd()")
    assert sh.user_ns["rows"] == 3
    # absolute paths (in the cell, a Path input, a notebook function) read their staged copies
    assert sh.user_ns["ref"] == "reference"
    assert sh.user_ns["q_text"] == "by an absolute Path"
    assert sh.user_ns["fn_text"] == "read by a notebook function"
    assert sh.user_ns["listing"] == ["abs.txt", "fn.txt", "ref.txt"]
    assert sh.user_ns["where"].startswith(str(ssh_env.remote))
    assert sh.user_ns["q"] == outside / "abs.txt"   # the kernel's value is untouched


@pytest.mark.ssh
def test_local_modules_travel_with_the_job(sh, ssh_env, project, src, tmp_path):
    # an editable install the old way: a .pth file in a site directory names the source tree
    (tmp_path / "edsrc" / "edpkg").mkdir(parents=True)
    (tmp_path / "edsrc" / "edpkg" / "__init__.py").write_text("NAME = 'editable'\n")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "cj_edpkg.pth").write_text(str(tmp_path / "edsrc") + "\n")
    ok(sh, f"import site\nsite.addsitedir({str(tmp_path / 'site')!r})\nimport edpkg\n"
           "import helpers_cj\nfrom mypkg import triple\nbox = helpers_cj.Box(5)")
    ok(sh, "%%cluster far\nimport os\nr = (helpers_cj.double(box.v), triple(3), edpkg.NAME)\n"
           "f = helpers_cj.__file__\nimport mypkg.core\ng = mypkg.core.__file__\n"
           "e = edpkg.__file__\npid = os.getpid()")
    rec = last_job()
    assert sh.user_ns["r"] == (10, 9, "editable")
    modules = JobPaths.from_dir(rec.job_dir).modules
    assert sh.user_ns["f"] == os.path.join(modules, "helpers_cj.py")
    assert sh.user_ns["g"] == os.path.join(modules, "mypkg", "core.py")
    assert sh.user_ns["e"] == os.path.join(modules, "edpkg", "__init__.py")
    assert sh.user_ns["pid"] == started(rec)["pid"] != os.getpid()


@pytest.mark.ssh
def test_paths_coming_back_stay_in_the_working_directory(sh, ssh_env, project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "seed.txt").write_text("seed")
    (project / "link").symlink_to(elsewhere)
    with capture_output() as cap:
        ok(sh, "%%cluster far\nimport os\nos.listdir('link')\n"
               "open('link/escaped.txt', 'w').write('no')\nopen('fine.txt', 'w').write('ok')")
    assert not (elsewhere / "escaped.txt").exists()
    assert (project / "fine.txt").read_text() == "ok"
    assert "refused link/escaped.txt" in cap.stderr and "leaves the working directory" \
        in cap.stderr


@pytest.mark.ssh
def test_a_file_altered_on_the_cluster_is_refused(sh, ssh_env, project):
    ok(sh, "%%cluster far --async --job j2\nopen('result.txt', 'w').write('genuine')")
    job = sh.user_ns["j2"]
    assert job.wait(120).value == "completed"
    files = Path(JobPaths.from_dir(job.record.job_dir).files)
    for f in files.iterdir():
        f.write_text("forged!")
    with capture_output() as cap:
        ok(sh, "pass")
    assert not (project / "result.txt").exists()
    assert "refused result.txt" in cap.stderr


@pytest.mark.ssh
def test_path_map_runs_the_job_in_the_mapped_directory(sh, ssh_env, monkeypatch):
    laptop, mirror = ssh_env.remote / "laptop", ssh_env.remote / "mirror"
    (laptop / "data.txt").write_text("the laptop's copy\n")
    (mirror / "data.txt").write_text("the cluster's copy\n")
    monkeypatch.chdir(laptop)
    with capture_output() as cap:
        ok(sh, "%%cluster mapped\nimport os\ntext = open('data.txt').read()\n"
               f"by_path = open('{laptop / 'data.txt'}').read()\n"
               "open('made.txt', 'w').write('m')\nwhere, pid = os.getcwd(), os.getpid()")
    assert sh.user_ns["where"] == str(mirror)
    assert sh.user_ns["pid"] == started(last_job())["pid"] != os.getpid()
    assert sh.user_ns["text"] == sh.user_ns["by_path"] == "the cluster's copy\n"
    # written where the job ran, which is this directory's other self: nothing travels
    assert (mirror / "made.txt").read_text() == "m" and not (laptop / "made.txt").exists()
    assert "files from job" not in cap.stderr


@pytest.mark.slurm
@pytest.mark.ssh
def test_slurm_here_runs_in_the_directory_and_slurm_over_ssh_stages(sh, ssh_env, project):
    clusters = ensure("slurm", "sshd")
    res = {"partition": clusters["slurm"]["partition"], "time": "10m", "mem": "300M"}
    profiles = dict(ssh_env.profiles)
    profiles["slurm_here"] = {"scheduler": "slurm", "python": sys.executable, "resources": res,
                              "workdir": str(ssh_env.remote / "slurm-here")}
    profiles["slurm_far"] = ssh_profile(clusters["ssh"], ssh_env.remote / "slurm-far",
                                        scheduler="slurm", resources=res)
    write_profiles(ssh_env.base / "cj", profiles)
    cell = ("import os\nrows = len(open('data/x.csv').read().splitlines())\n"
            "open('from_slurm.txt', 'w').write(os.environ['SLURM_JOB_ID'])\n"
            "where = os.getcwd()")
    ok(sh, "%%cluster slurm_here\n" + cell)
    rec = last_job()
    assert rec.scheduler == "slurm" and sh.user_ns["rows"] == 3
    assert sh.user_ns["where"] == str(project)
    assert (project / "from_slurm.txt").read_text() == rec.native_id
    ok(sh, "%%cluster slurm_far\n" + cell)
    rec = last_job()
    assert sh.user_ns["where"] == JobPaths.from_dir(rec.job_dir).work
    assert (project / "from_slurm.txt").read_text() == rec.native_id     # came back


# -- a real kernel (ipykernel over ZMQ), started in a notebook directory -------------------------

@pytest.mark.ssh
def test_real_kernel_runs_jobs_in_its_directory_and_stages_over_ssh(tmp_path):
    from jupyter_client import KernelManager

    ssh = ensure("sshd")["ssh"]
    home = tmp_path / "cj"
    write_profiles(home, {"far": ssh_profile(ssh, tmp_path / "remote")})
    nb = tmp_path / "notebook"
    nb.mkdir()
    (nb / "data.txt").write_text("beside the notebook\n")
    (nb / "helpers_nb.py").write_text("def double(x):\n    return 2 * x\n")
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(nb), env={**os.environ, "CLUSTERJUPYTER_HOME": str(home)})
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)

        def cell(code: str) -> str:
            out: list[str] = []

            def hook(msg: dict) -> None:
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    out.append("ERROR " + msg["content"]["ename"] + msg["content"]["evalue"])

            reply = kc.execute_interactive(code, output_hook=hook, timeout=180)
            assert reply["content"]["status"] == "ok", "".join(out)
            return "".join(out)

        cell("%load_ext clusterjupyter\nimport os, helpers_nb\nkpid = os.getpid()")
        job = ("import os\nprint(open('data.txt').read().strip(), helpers_nb.double(4), "
               "os.getpid() != kpid, os.getcwd() == {!r})\nopen('{}', 'w').write('x')")
        assert cell("%%cluster\n" + job.format(str(nb), "local.txt")).splitlines()[0] \
            == "beside the notebook 8 True True"
        assert (nb / "local.txt").exists()
        out = cell("%%cluster far\n" + job.format(str(nb), "far.txt"))
        assert out.splitlines()[0] == "beside the notebook 8 True False"
        assert (nb / "far.txt").read_text() == "x" and "far.txt" in out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
