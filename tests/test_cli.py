"""The ``clusterjupyter`` command, run as a subprocess against real local jobs.

Jobs are submitted by a real IPython shell in this process; the command runs in another process
(as from a terminal), sharing only the journal and the job directories.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import module_home
from shells import new_shell, ok, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from module_home(tmp_path_factory, "cli-home")


@pytest.fixture(scope="module")
def shell(home: Any) -> Any:
    sh = new_shell()
    yield sh
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()


def cli(*args: str, timeout: float = 60, **env_vars: str) -> subprocess.CompletedProcess:
    """Run the command in its own process (the console script's entry point)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    return subprocess.run([sys.executable, "-c", "import sys; from clusterjupyter.cli import "
                           "main; sys.exit(main())", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def last_id() -> str:
    from clusterjupyter import api

    return api.list_jobs(limit=1)[0].id


@pytest.fixture(scope="module")
def failed(shell: Any) -> str:
    r = run(shell, "%%cluster --name cli-failing\nimport os, sys\n"
                   "print('pid', os.getpid(), file=sys.stderr)\nraise ValueError('no-such-key')")
    assert isinstance(r.error_in_exec, ValueError)
    return last_id()


@pytest.fixture(scope="module")
def completed(shell: Any) -> str:
    ok(shell, "%%cluster --name cli-done\nimport os\nnumbers = [1, 2, 3]\npid = os.getpid()\n"
              "label = 'x' * 3\nsum(numbers)")
    return last_id()


def test_console_script_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'clusterjupyter = "clusterjupyter.cli:main"' in text


def test_status_of_a_failed_job_says_why(failed: str) -> None:
    p = cli("status", failed[:8])
    assert p.returncode == 1, p
    assert "failed: the cell raised ValueError: no-such-key" in p.stdout
    assert "Remote traceback:" in p.stdout and "raise ValueError('no-such-key')" in p.stdout
    assert "[stderr]" in p.stdout and "pid" in p.stdout  # the log tail
    d = json.loads(cli("status", failed, "--json").stdout)
    assert d["state"] == "failed" and d["error"]["type"] == "builtins.ValueError"
    assert d["error"]["message"] == "no-such-key" and "Traceback" in d["error"]["traceback"]
    assert "raise ValueError" in d["cell"]


def test_logs_of_a_failed_job_print_the_reason(failed: str) -> None:
    p = cli("logs", failed, "--stream", "stdout")
    assert p.returncode == 1
    assert "(stdout is empty)" in p.stdout
    assert "ValueError: no-such-key" in p.stderr and "Remote traceback" in p.stderr
    p = cli("logs", failed, "--stream", "stderr")
    pid = int(p.stdout.split()[1])
    assert pid != os.getpid()  # ran in another process


def test_jobs_listing_and_json(failed: str, completed: str) -> None:
    p = cli("jobs")
    assert p.returncode == 0
    assert "cli-failing" in p.stdout and "cli-done" in p.stdout
    assert "the cell raised ValueError: no-such-key" in p.stdout
    jobs = json.loads(cli("jobs", "--json").stdout)["jobs"]
    by_name = {j["name"]: j for j in jobs}
    assert "cell" not in by_name["cli-done"]  # listings carry a preview only
    assert by_name["cli-done"]["preview"].startswith("import os\nnumbers")
    assert by_name["cli-failing"]["error"]["type"] == "builtins.ValueError"
    assert "traceback" not in by_name["cli-failing"]["error"]
    only = json.loads(cli("jobs", "--state", "failed", "--json").stdout)["jobs"]
    assert {j["state"] for j in only} == {"failed"}


def test_result_to_pickle_and_json(completed: str, tmp_path: Path) -> None:
    out = tmp_path / "values.pkl"
    p = cli("result", completed[:8], "--to", str(out))
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        values = pickle.load(f)
    assert values["numbers"] == [1, 2, 3] and values["_"] == 6
    assert values["pid"] != os.getpid()
    out = tmp_path / "values.json"
    p = cli("result", completed, "--to", str(out), "--names", "numbers,label")
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text()) == {"numbers": [1, 2, 3], "label": "xxx"}


def test_result_refusals(completed: str, failed: str, shell: Any, tmp_path: Path) -> None:
    ok(shell, "%%cluster --name cli-set\nodd = {1, 3}")
    p = cli("result", last_id(), "--to", str(tmp_path / "x.json"))
    assert p.returncode == 2 and "not JSON: odd (set)" in p.stderr and "--format pickle" in p.stderr
    assert not (tmp_path / "x.json").exists()
    p = cli("result", completed, "--to", str(tmp_path / "y.pkl"), "--names", "nope")
    assert p.returncode == 2 and "did not send back nope" in p.stderr
    p = cli("result", failed, "--to", str(tmp_path / "z.pkl"))
    assert p.returncode == 1  # the cell raised: its values are written, and it says so
    assert "the cell raised ValueError: no-such-key" in p.stderr


def test_cancel_follow_and_queue(shell: Any, tmp_path: Path) -> None:
    job = ok(shell, "%%cluster --async --name cli-sleeper\nimport time\nprint('up', flush=True)\n"
                    "time.sleep(60)")
    from clusterjupyter import api

    deadline = time.time() + 30
    while api.journal().get(job.id).state.value != "running":
        assert time.time() < deadline
        time.sleep(0.1)
    queue = json.loads(cli("queue", "local", "--json").stdout)
    assert job.native_id in {q["native_id"] for q in queue["queue"]}
    assert {q["name"] for q in queue["queue"] if q["native_id"] == job.native_id} \
        == {"cli-sleeper"}
    # another CLUSTERJUPYTER_HOME does not list this home's job
    other = cli("queue", "local", "--json", CLUSTERJUPYTER_HOME=str(tmp_path / "other"))
    assert job.native_id not in {q["native_id"] for q in json.loads(other.stdout)["queue"]}
    follower = subprocess.Popen(
        [sys.executable, "-c", "import sys; from clusterjupyter.cli import main; "
         "sys.exit(main())", "logs", job.id, "-f"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    p = cli("cancel", job.id[:8])
    assert p.returncode == 0 and "cancelled" in p.stdout, p
    out, err = follower.communicate(timeout=60)
    assert "up" in out  # followed the log until the job ended
    assert follower.returncode == 1 and "cancelled" in err
    assert "143" not in err and "exit code" not in err
    assert cli("cancel", job.id).stdout.startswith(f"job {job.id[:8]} already ended")


def test_profiles_and_check() -> None:
    d = json.loads(cli("profiles", "--json").stdout)
    assert [p["name"] for p in d["profiles"]][0] == "local"
    p = cli("check", "local", "--json")
    assert p.returncode == 0, p.stdout
    assert json.loads(p.stdout)["ok"] is True


def test_exit_codes_for_bad_input(failed: str) -> None:
    assert cli("status", "ffffffff").returncode == 3
    p = cli("queue", "no-such-profile")
    assert p.returncode == 3 and "does not exist yet" in p.stderr and "Profiles tab" in p.stderr
    p = cli("jobs", "--limit", "abc")
    assert p.returncode == 2 and "whole number" in p.stderr
    p = cli("jobs", "--state", "sleeping")
    assert p.returncode == 2 and "valid states" in p.stderr
    p = cli("bogus")
    assert p.returncode == 2 and "invalid choice" in p.stderr
    p = cli("check", "no-such-profile")
    assert p.returncode == 3


def test_failure_of_a_job_from_an_older_journal(failed: str, home: Path) -> None:
    """A journal written before failures were kept: the column is added when it is opened,
    and a failed job's reason is rebuilt from its job directory, then kept."""
    from clusterjupyter import api

    db = api.journal().path
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(jobs)") if r[1] != "error"]
    con.executescript(f"CREATE TABLE old AS SELECT {', '.join(cols)} FROM jobs; "
                      "DROP TABLE jobs; ALTER TABLE old RENAME TO jobs;")
    con.commit()
    assert "error" not in [r[1] for r in con.execute("PRAGMA table_info(jobs)")]
    con.close()
    p = cli("status", failed, "--json")
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["error"]["message"] == "no-such-key"
    con = sqlite3.connect(db)
    kept = con.execute("SELECT error FROM jobs WHERE id = ?", (failed,)).fetchone()[0]
    con.close()
    assert json.loads(kept)["type"] == "builtins.ValueError"


def test_env_sync_list_log_prune_on_a_second_interpreter(tmp_path: Path) -> None:
    """``clusterjupyter env`` against a local profile whose python is another interpreter (a
    virtual environment without numpy, shared with tests/test_env.py)."""
    from importlib.metadata import version

    from helpers import write_profiles
    from test_env import venv_python

    home = tmp_path / "cj"
    write_profiles(home, {"envp": {"scheduler": "local", "python": venv_python("nonumpy"),
                                   "workdir": str(tmp_path / "work")}})

    def env(*args: str) -> subprocess.CompletedProcess:
        return cli("env", *args, timeout=600, CLUSTERJUPYTER_HOME=str(home))

    p = env("log", "envp")
    assert p.returncode == 3 and "no environment was built for profile 'envp'" in p.stderr
    p = env("sync", "envp")
    assert p.returncode == 2 and "--packages" in p.stderr and "--all" in p.stderr
    assert env("sync", "envp", "--packages", "packaging", "--json").returncode == 2
    assert env("list", "no-such-profile").returncode == 3
    p = env("build", "envp")
    assert p.returncode == 2 and "sync" in p.stderr and "prune" in p.stderr
    assert json.loads(env("list", "envp", "--json").stdout)["environments"] == []

    p = env("sync", "envp", "--packages", "packaging")
    assert p.returncode == 0, p.stderr
    (e,) = json.loads(env("list", "envp", "--json").stdout)["environments"]
    assert e["state"] == "ready" and e["active"] is True
    assert f"packaging=={version('packaging')}" in e["requirements"]
    assert f"built {e['dir']}" in p.stdout and "s] clusterjupyter: built" in p.stdout  # progress
    # the environment's interpreter has what was asked, built by a process of its own
    venv = Path(e["dir"], "venv", "bin", "python")
    probe = subprocess.run([str(venv), "-c", "import sys, packaging; print(sys.prefix)"],
                           capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin"})
    assert probe.returncode == 0 and probe.stdout.strip() == str(venv.parents[1])
    p = env("log", "envp")
    assert p.returncode == 0 and p.stdout.startswith(f"{e['log']}:")
    assert "Successfully installed" in p.stdout and ", process " in p.stdout
    p = env("list", "envp")
    assert f"* {e['digest']} ready" in p.stdout and "dill==" in p.stdout
    # the health check shows it; a second sync finds it
    d = json.loads(cli("check", "envp", "--json", CLUSTERJUPYTER_HOME=str(home)).stdout)
    assert d["environment"]["synced"]["digest"] == e["digest"]
    p = env("sync", "envp", "--packages", "packaging")
    assert p.returncode == 0 and "already there" in p.stdout and "building" not in p.stdout
    # in use: kept by prune; after `off` it goes
    assert e["dir"] not in env("prune", "envp").stdout and venv.exists()
    assert env("off", "envp").returncode == 0
    p = env("prune", "envp")
    assert p.returncode == 0 and e["dir"] in p.stdout and not Path(e["dir"]).exists()
