"""The server extension's REST routes on a real Jupyter server (pytest-jupyter) and journal."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from http.cookies import SimpleCookie

import dill
import pytest
from tornado.httpclient import HTTPClientError

from clusterjupyter import api, paths
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.journal import JobRecord
from clusterjupyter.states import JobState

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"clusterjupyter.server": True}}}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private CLUSTERJUPYTER_HOME: its own journal, profiles and local work root."""
    path = tmp_path / "cj-home"
    monkeypatch.setenv(paths.HOME_ENV, str(path))
    return path


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """The server never unpickles: any attempt fails the request (and the test)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the server extension tried to unpickle something")

    for module in (pickle, dill):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)


def add_job(state: JobState = JobState.RUNNING, *, profile: str = "local", name: str = "",
            submitted: float | None = None, **extra) -> JobRecord:
    job_id = uuid.uuid4().hex
    now = time.time() if submitted is None else submitted
    rec = JobRecord(
        id=job_id, name=name or f"job-{job_id[:6]}", profile=profile, scheduler="local",
        state=state, submitted=now, cell="x = 1",
        job_dir=JobPaths(paths.local_work_root(), job_id).dir,
        started=now + 1 if state is not JobState.PENDING else None,
        finished=now + 3 if state.final else None, **extra)
    api.journal().add(rec)
    return rec


async def fetch_json(jp_fetch, *parts, **kwargs):
    response = await jp_fetch("clusterjupyter", *parts, **kwargs)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def fetch_error(jp_fetch, *parts, **kwargs) -> tuple[int, dict]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("clusterjupyter", *parts, **kwargs)
    return info.value.code, json.loads(info.value.response.body)


# -- jobs ---------------------------------------------------------------------------------------

async def test_list_jobs_newest_first(jp_fetch):
    t = time.time()
    old = add_job(JobState.COMPLETED, submitted=t - 100, exit_code=0)
    mid = add_job(JobState.RUNNING, submitted=t - 50)
    new = add_job(JobState.PENDING, submitted=t - 10, reason="Priority")

    body = await fetch_json(jp_fetch, "jobs")

    assert [j["id"] for j in body["jobs"]] == [new.id, mid.id, old.id]
    first = body["jobs"][0]
    assert first["state"] == "pending"
    assert first["reason"] == "Priority"
    assert first["elapsed"] is None
    assert body["jobs"][2]["elapsed"] == pytest.approx(2.0)
    assert body["jobs"][2]["exit_code"] == 0


async def test_listing_carries_a_preview_one_job_the_source_and_error(jp_fetch):
    big = "\n".join(f"line_{i} = {'x' * 200!r}" for i in range(5000))  # ~1 MB of cell
    error = {"type": "builtins.ValueError", "message": "bad", "exit_code": 1,
             "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad\n",
             "log_tail": "[stderr]\nsomething went wrong"}
    rec = add_job(JobState.FAILED, name="big-cell", reason="the cell raised ValueError: bad",
                  exit_code=1, error=error)
    with api.journal()._conn() as c:
        c.execute("UPDATE jobs SET cell = ? WHERE id = ?", (big, rec.id))

    response = await jp_fetch("clusterjupyter", "jobs")
    assert len(response.body) < 10_000
    job = json.loads(response.body)["jobs"][0]
    assert "cell" not in job and job["preview"].startswith("line_0 = ")
    assert len(job["preview"]) <= 240
    assert job["error"] == {"type": "builtins.ValueError", "message": "bad", "exit_code": 1}
    assert job["explanation"] == "the cell raised ValueError: bad"

    one = await fetch_json(jp_fetch, "jobs", rec.id)
    assert one["cell"] == big
    assert one["error"]["traceback"].endswith("ValueError: bad\n")
    assert one["error"]["log_tail"] == "[stderr]\nsomething went wrong"


async def test_list_jobs_filters(jp_fetch):
    running = add_job(JobState.RUNNING)
    pending = add_job(JobState.PENDING, profile="hpc")
    add_job(JobState.FAILED)
    add_job(JobState.CANCELLED, profile="hpc")

    body = await fetch_json(jp_fetch, "jobs", params={"state": "pending,running"})
    assert {j["id"] for j in body["jobs"]} == {running.id, pending.id}

    body = await fetch_json(jp_fetch, "jobs", params={"state": "Pending", "profile": "hpc"})
    assert [j["id"] for j in body["jobs"]] == [pending.id]

    body = await fetch_json(jp_fetch, "jobs", params={"limit": "1"})
    assert len(body["jobs"]) == 1

    body = await fetch_json(jp_fetch, "jobs", params={"profile": "nowhere"})
    assert body["jobs"] == []


async def test_list_jobs_bad_parameters(jp_fetch):
    code, body = await fetch_error(jp_fetch, "jobs", params={"state": "running,asleep"})
    assert code == 400
    assert "asleep" in body["message"]
    for state in JobState:
        assert state.value in body["message"]

    code, body = await fetch_error(jp_fetch, "jobs", params={"limit": "lots"})
    assert code == 400
    assert "limit" in body["message"]


async def test_get_one_job(jp_fetch):
    rec = add_job(JobState.RUNNING, name="fit-model")

    body = await fetch_json(jp_fetch, "jobs", rec.id)
    assert body["id"] == rec.id
    assert body["name"] == "fit-model"
    assert body["state"] == "running"
    assert body["cell"] == "x = 1"

    # the same references the magics accept: a prefix of the id, or the name
    assert (await fetch_json(jp_fetch, "jobs", rec.id[:8]))["id"] == rec.id
    assert (await fetch_json(jp_fetch, "jobs", "fit-model"))["id"] == rec.id


async def test_unknown_job_is_404(jp_fetch):
    code, body = await fetch_error(jp_fetch, "jobs", "no-such-job")
    assert code == 404
    assert body["message"] == "no job 'no-such-job'"

    for tail in (("logs",), ("cancel",)):
        method = "POST" if tail == ("cancel",) else "GET"
        code, body = await fetch_error(jp_fetch, "jobs", "50%-done", *tail, method=method,
                                       **({"body": b""} if method == "POST" else {}))
        assert code == 404
        assert body["message"] == "no job '50%-done'"


# -- logs ---------------------------------------------------------------------------------------

def write_job_dir(rec: JobRecord, **files: str) -> None:
    os.makedirs(rec.job_dir, mode=0o700)
    for name, text in files.items():
        with open(os.path.join(rec.job_dir, name), "w") as f:
            f.write(text)


async def test_logs_tail_of_a_local_job(jp_fetch):
    rec = add_job(JobState.RUNNING)
    write_job_dir(rec, stdout="".join(f"line {i}\n" for i in range(300)),
                  stderr="warning: careful\n")

    body = await fetch_json(jp_fetch, "jobs", rec.id, "logs")
    lines = body["text"].splitlines()
    assert len(lines) == 200
    assert lines[0] == "line 100" and lines[-1] == "line 299"
    assert body["stream"] == "stdout"
    assert body["state"] == "running"

    body = await fetch_json(jp_fetch, "jobs", rec.id, "logs", params={"tail": "3"})
    assert body["text"].splitlines() == ["line 297", "line 298", "line 299"]

    body = await fetch_json(jp_fetch, "jobs", rec.id, "logs", params={"tail": "1000"})
    assert len(body["text"].splitlines()) == 300

    body = await fetch_json(jp_fetch, "jobs", rec.id, "logs", params={"stream": "stderr"})
    assert body["text"] == "warning: careful\n"


async def test_logs_bad_stream_is_400(jp_fetch):
    rec = add_job(JobState.RUNNING)

    code, body = await fetch_error(jp_fetch, "jobs", rec.id, "logs", params={"stream": "out"})
    assert code == 400
    assert body["message"] == ("unknown log stream 'out'; valid streams: "
                               + ", ".join(api.LOG_STREAMS))

    for tail in ("-4", "0", "lots", "100001"):
        code, body = await fetch_error(jp_fetch, "jobs", rec.id, "logs", params={"tail": tail})
        assert code == 400
        assert body["message"].startswith("tail must be an integer between 1 and 100000")


async def test_logs_of_a_job_whose_profile_is_gone_is_409(jp_fetch):
    rec = add_job(JobState.COMPLETED, profile="retired-cluster")

    code, body = await fetch_error(jp_fetch, "jobs", rec.id, "logs")

    assert code == 409
    assert "retired-cluster" in body["message"]


# -- cancel -------------------------------------------------------------------------------------

@pytest.fixture
def sleeper():
    """Start a detached process standing in for a local job: ``sleeper(job_id)``.

    The job id is in its command line, which is how the local scheduler recognises its jobs.
    """
    procs = []

    def start(job_id: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)", job_id],
            start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def wait_for_state(job_id: str, state: JobState, timeout: float = 30) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        rec = api.get_job(job_id)
        if rec.state is state or time.monotonic() > deadline:
            return rec
        await asyncio.sleep(0.2)


async def test_cancel_a_running_local_job(jp_fetch, sleeper):
    rec = add_job(JobState.RUNNING)
    proc = sleeper(rec.id)
    api.journal().update(rec.id, native_id=str(proc.pid))
    write_job_dir(rec)

    body = await fetch_json(jp_fetch, "jobs", rec.id, "cancel", method="POST", body=b"")

    assert body["id"] == rec.id
    # the scheduler was asked; the journal says so until the job is seen gone
    assert body["state"] == "cancelled" or body["reason"] == "cancel requested"
    assert await asyncio.to_thread(proc.wait, 20) != 0
    assert (await wait_for_state(rec.id, JobState.CANCELLED)).state is JobState.CANCELLED


async def test_cancel_a_finished_job_changes_nothing(jp_fetch):
    rec = add_job(JobState.COMPLETED, exit_code=0)

    body = await fetch_json(jp_fetch, "jobs", rec.id, "cancel", method="POST", body=b"")

    assert body["state"] == "completed"
    assert api.get_job(rec.id).state is JobState.COMPLETED


# -- profiles -----------------------------------------------------------------------------------

async def test_profiles(jp_fetch, home):
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "profiles.toml").write_text(
        'default = "hpc"\n[profiles.hpc]\nscheduler = "slurm"\nhost = "login.example.org"\n')

    body = await fetch_json(jp_fetch, "profiles")

    names = [p["name"] for p in body["profiles"]]
    assert names[0] == "local"
    assert "hpc" in names
    hpc = body["profiles"][names.index("hpc")]
    assert hpc["scheduler"] == "slurm"
    assert hpc["host"] == "login.example.org"
    assert hpc["default"] is True
    assert body["profiles"][0]["default"] is False


# -- authentication and XSRF --------------------------------------------------------------------

NO_AUTH = {"Authorization": ""}


@pytest.mark.parametrize("parts", [("jobs",), ("jobs", "JOB"), ("jobs", "JOB", "logs"),
                                   ("profiles",)])
async def test_get_without_token_is_refused(jp_fetch, parts):
    rec = add_job(JobState.RUNNING)
    parts = tuple(rec.id if p == "JOB" else p for p in parts)

    code, _ = await fetch_error(jp_fetch, *parts, headers=NO_AUTH)

    assert code in (401, 403)


async def test_post_without_token_is_refused(jp_fetch, sleeper):
    rec = add_job(JobState.RUNNING)
    proc = sleeper(rec.id)
    api.journal().update(rec.id, native_id=str(proc.pid))

    code, _ = await fetch_error(jp_fetch, "jobs", rec.id, "cancel", method="POST", body=b"",
                                headers=NO_AUTH)

    assert code in (401, 403)
    await asyncio.sleep(0.5)  # time for a cancel to have happened, had it been accepted
    assert api.get_job(rec.id).state is JobState.RUNNING
    assert api.get_job(rec.id).reason == ""
    assert proc.poll() is None


async def test_post_with_login_cookie_needs_xsrf(jp_fetch, jp_serverapp):
    """A browser session (cookie) may cancel only with the XSRF token, as the lab frontend does."""
    rec = add_job(JobState.COMPLETED, exit_code=0)
    # log in the way a browser does: the token in the URL once, a cookie afterwards
    response = await jp_fetch("clusterjupyter", "jobs", headers=NO_AUTH,
                              params={"token": jp_serverapp.identity_provider.token})
    cookies = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        cookies.load(header)
    assert cookies, "the server set no login cookie"
    cookie = "; ".join(f"{k}={m.value}" for k, m in cookies.items())
    browser = {"Authorization": "", "Cookie": cookie}
    assert (await fetch_json(jp_fetch, "jobs", rec.id, headers=browser))["id"] == rec.id

    code, body = await fetch_error(jp_fetch, "jobs", rec.id, "cancel", method="POST", body=b"",
                                   headers=browser)
    assert code == 403
    assert "xsrf" in body["message"].lower()

    xsrf = cookies["_xsrf"].value if "_xsrf" in cookies else None
    if xsrf is None:  # not set by the API call: ask a page that sets it
        page = await jp_fetch("login", headers=NO_AUTH)
        extra = SimpleCookie()
        for header in page.headers.get_list("Set-Cookie"):
            extra.load(header)
        xsrf = extra["_xsrf"].value
        browser["Cookie"] += f"; _xsrf={xsrf}"
    browser["X-XSRFToken"] = xsrf
    body = await fetch_json(jp_fetch, "jobs", rec.id, "cancel", method="POST", body=b"",
                            headers=browser)
    assert body["id"] == rec.id


async def test_jobs_of_a_kernel_that_died_still_reach_their_end(jp_fetch, home):
    """The kernel that submitted a job exits at once; the server notices the job's end."""
    script = (
        "import os\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "sh.run_line_magic('load_ext', 'clusterjupyter')\n"
        "r = sh.run_cell('%%cluster --async --name orphan\\nimport time\\ntime.sleep(1)\\nx = 1')\n"
        "assert r.success, r.error_in_exec\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=os.environ.copy(), timeout=60)
    rec = api.get_job("orphan")
    assert rec.state is JobState.PENDING or rec.state is JobState.RUNNING
    deadline = time.time() + 40
    state = None
    while time.time() < deadline:
        jobs = (await fetch_json(jp_fetch, "jobs"))["jobs"]
        state = next(j["state"] for j in jobs if j["id"] == rec.id)
        if state == "completed":
            break
        await asyncio.sleep(0.5)
    assert state == "completed"
    assert api.get_job(rec.id).result_status == "available"


def submit_in_another_kernel(name: str, body: str) -> JobRecord:
    """A real local job, submitted by a shell in another process that then exits."""
    script = (
        "import os\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "sh.run_line_magic('load_ext', 'clusterjupyter')\n"
        f"r = sh.run_cell({f'%%cluster --async --name {name}' + chr(10) + body!r})\n"
        "assert r.success, r.error_in_exec\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=os.environ.copy(), timeout=60)
    return api.get_job(name)


async def test_queue_lists_and_acts_on_real_jobs(jp_fetch):
    rec = submit_in_another_kernel("queued-one", "import time\ntime.sleep(120)")
    try:
        deadline = time.time() + 30
        while True:
            body = await fetch_json(jp_fetch, "queue", params={"profile": "local"})
            mine = [q for q in body["queue"] if q["job"] == rec.id]
            if mine or time.time() > deadline:
                break
            await asyncio.sleep(0.3)
        assert mine and mine[0]["name"] == "queued-one" and mine[0]["state"] == "running"
        assert body["profile"] == "local" and body["scheduler"] == "local"

        code, err = await fetch_error(jp_fetch, "queue", "local", "explode", method="POST",
                                      body=json.dumps({"ids": [mine[0]["native_id"]]}))
        assert code == 400 and "valid: cancel, hold, release" in err["message"]
        code, err = await fetch_error(jp_fetch, "queue", "local", "cancel", method="POST",
                                      body=json.dumps({"ids": "all"}))
        assert code == 400

        done = await fetch_json(jp_fetch, "queue", "local", "hold", method="POST",
                                body=json.dumps({"ids": [mine[0]["native_id"]]}))
        assert "cannot hold" in done["failed"][mine[0]["native_id"]]  # local jobs cannot
        done = await fetch_json(jp_fetch, "queue", "local", "cancel", method="POST",
                                body=json.dumps({"ids": [mine[0]["native_id"]]}))
        assert done["failed"] == {}
        assert (await wait_for_state(rec.id, JobState.CANCELLED)).state is JobState.CANCELLED
    finally:
        try:
            api.cancel_job(rec.id)
        except Exception:
            pass


async def test_queue_without_token_is_refused(jp_fetch):
    code, _ = await fetch_error(jp_fetch, "queue", headers=NO_AUTH)
    assert code in (401, 403)
    code, _ = await fetch_error(jp_fetch, "queue", "local", "cancel", method="POST",
                                body=json.dumps({"ids": ["1"]}), headers=NO_AUTH)
    assert code in (401, 403)


async def test_listing_gives_notebook_paths_under_the_root(jp_fetch, jp_root_dir):
    inside = add_job(JobState.COMPLETED, notebook=str(jp_root_dir / "sub" / "a.ipynb"))
    outside = add_job(JobState.COMPLETED, notebook="/elsewhere/b.ipynb")
    body = await fetch_json(jp_fetch, "jobs")
    paths = {j["id"]: j["notebook_path"] for j in body["jobs"]}
    assert paths[inside.id] == "sub/a.ipynb" and paths[outside.id] == ""
    assert abs(body["now"] - time.time()) < 60


async def test_listing_names_each_elements_sweep(jp_fetch):
    """A sweep's element names its sweep, index and attempt, with the sweep's one state and
    counts over its elements' latest attempts; an attempt a retry replaced is not listed."""
    sweep_id = uuid.uuid4().hex[:24]
    j = api.journal()
    j.add_sweep({"id": sweep_id, "name": "grid", "profile": "local", "created": time.time(),
                 "size": 2, "axes": ["a"], "outputs": [], "params": b"", "params_mac": ""})
    done = add_job(JobState.COMPLETED, name="grid[0]")
    lost = add_job(JobState.LOST, name="grid[1]")
    retry = add_job(JobState.RUNNING, name="grid[1]")
    single = add_job(JobState.FAILED, name="alone")
    for rec, idx, attempt in ((done, 0, 0), (lost, 1, 0), (retry, 1, 1)):
        j._conn().execute("INSERT INTO sweep_elements VALUES (?, ?, ?, ?)",
                          (sweep_id, idx, attempt, rec.id))
    body = await fetch_json(jp_fetch, "jobs")
    jobs = {job["id"]: job for job in body["jobs"]}
    assert "sweep" not in jobs[single.id]
    ref = jobs[retry.id]["sweep"]
    assert ref["id"] == sweep_id and ref["name"] == "grid" and ref["size"] == 2
    assert (ref["index"], ref["attempt"], ref["latest"]) == (1, 1, True)
    assert ref["state"] == "running" and ref["counts"] == {
        "done": 1, "running": 1, "pending": 0, "failed": 0}
    assert lost.id not in jobs
    assert jobs[done.id]["sweep"]["state"] == "running" and ref["listed"] == 2


def test_a_large_sweep_lists_its_unfinished_elements_first():
    """However many elements a sweep has, a listing carries at most ``per_sweep`` of them,
    those not completed first, while its counts cover them all."""
    sweep_id = uuid.uuid4().hex[:24]
    j = api.journal()
    j.add_sweep({"id": sweep_id, "name": "big", "profile": "local", "created": time.time(),
                 "size": 6, "axes": ["a"], "outputs": [], "params": b"", "params_mac": ""})
    states = [JobState.COMPLETED] * 4 + [JobState.FAILED, JobState.PENDING]
    recs = [add_job(s, name=f"big[{i}]") for i, s in enumerate(states)]
    for i, rec in enumerate(recs):
        j._conn().execute("INSERT INTO sweep_elements VALUES (?, ?, 0, ?)", (sweep_id, i, rec.id))
    jobs, refs = api.list_rows(per_sweep=2)
    listed = [r for r in jobs if r.id in refs and refs[r.id]["id"] == sweep_id]
    assert {r.name for r in listed} == {"big[4]", "big[5]"}
    ref = refs[listed[0].id]
    assert ref["listed"] == 2 and ref["size"] == 6 and ref["state"] == "pending"
    assert ref["counts"] == {"done": 4, "running": 0, "pending": 1, "failed": 1}
    # a state filter keeps the sweep's elements in that state (its counts still cover all)
    jobs, refs = api.list_rows(("failed",), per_sweep=10)
    assert len({r.id for r in jobs}) == len(jobs)
    mine = [r for r in jobs if refs.get(r.id, {}).get("id") == sweep_id]
    assert [r.name for r in mine] == ["big[4]"] and refs[mine[0].id]["counts"]["done"] == 4
