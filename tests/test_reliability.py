"""Defects a fault and bad-input probe found, each on the real thing where it happened: a real
IPython shell on the local backend, a real Jupyter server (pytest-jupyter), real processes."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import uuid
import warnings

import pytest
from IPython.core.error import UsageError
from tornado.httpclient import HTTPClientError

from clusterjupyter import api, paths, serialize
from clusterjupyter.errors import AmbiguousJobError, IntegrityError, JournalError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.journal import JobRecord
from clusterjupyter.monitor import INTEGRITY
from clusterjupyter.states import JobState

from helpers import wait_for
from shells import new_shell, ok, run

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"clusterjupyter.server": True}}}


def add_job(job_id: str, state: JobState = JobState.COMPLETED, name: str = "",
            native_id: str | None = None) -> JobRecord:
    now = time.time()
    rec = JobRecord(id=job_id, name=name or f"job-{job_id[:6]}", profile="local",
                    scheduler="local", state=state, submitted=now, cell="x = 1",
                    job_dir=JobPaths(paths.local_work_root(), job_id).dir, native_id=native_id,
                    finished=now if state.final else None)
    api.journal().add(rec)
    return rec


def sleeper(shell, name: str = "sleeper"):
    job = ok(shell, f"%%cluster --async --name {name}\nimport time\ntime.sleep(120)")
    wait_for(lambda: job.state is JobState.RUNNING, 240, f"job {name} to run", step=0.05)
    return job


def alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return subprocess.run(["ps", "-o", "stat=", "-p", pid], capture_output=True,
                          text=True).stdout.strip()[:1] not in ("Z", "")


# -- 1: job references are literal ----------------------------------------------------------------

def test_sql_wildcards_name_no_job(shell):
    job = sleeper(shell)
    for ref in ("____", "%%%%", "%", "_" * 32):
        r = run(shell, f"%cluster cancel {ref}")
        assert isinstance(r.error_in_exec, UsageError) and "no job" in str(r.error_in_exec)
        r = run(shell, f"%cluster logs {ref}")
        assert isinstance(r.error_in_exec, UsageError)
    assert job.state is JobState.RUNNING and alive(job.native_id)
    assert api.get_job(job.id[:4].upper()).id == job.id   # hex prefixes are case-blind
    ok(shell, f"%cluster cancel {job.id[:6]}")
    assert job.state is JobState.CANCELLED


def test_ambiguous_prefix_lists_the_candidates(shell):
    a = add_job("abcd" + uuid.uuid4().hex[4:], name="first")
    b = add_job("abcd" + uuid.uuid4().hex[4:], name="second")
    with pytest.raises(AmbiguousJobError) as info:
        api.get_job("abcd")
    assert {r.id for r in info.value.candidates} == {a.id, b.id}
    r = run(shell, "%cluster status abcd")
    assert isinstance(r.error_in_exec, UsageError)
    assert a.id[:12] in str(r.error_in_exec) and b.id[:12] in str(r.error_in_exec)
    assert api.get_job(a.id[:8]).id == a.id and api.get_job("second").id == b.id


async def test_server_routes_take_references_literally(jp_fetch, cj_home):
    proc = subprocess.Popen(["sleep", "120"])
    try:
        rec = add_job(uuid.uuid4().hex, JobState.RUNNING, native_id=str(proc.pid))
        other = add_job(uuid.uuid4().hex, JobState.RUNNING)
        os.makedirs(other.job_dir, mode=0o700)
        with open(os.path.join(other.job_dir, "stdout"), "w") as f:
            f.write("secret output of another job\n")
        for ref, tail, method in (("%25%25%25%25", "cancel", "POST"), ("____", "cancel", "POST"),
                                  ("____", "logs", "GET"), ("%25", "logs", "GET")):
            with pytest.raises(HTTPClientError) as info:
                await jp_fetch("clusterjupyter", "jobs", ref, tail, method=method,
                               **({"body": b""} if method == "POST" else {}))
            assert info.value.code == 404, (ref, tail)
            assert b"secret output" not in (info.value.response.body or b"")
        assert api.journal().get(rec.id).state is JobState.RUNNING and proc.poll() is None
        twin = add_job(rec.id[:6] + uuid.uuid4().hex[6:], JobState.COMPLETED)
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("clusterjupyter", "jobs", rec.id[:6])
        assert info.value.code == 400
        body = json.loads(info.value.response.body)
        assert rec.id[:12] in body["message"] and twin.id[:12] in body["message"]
    finally:
        proc.kill()
        proc.wait()


# -- 3 and 4: nothing is allocated or accepted before verification --------------------------------

def finished_job(shell, cell: str = "loot = list(range(5))"):
    job = ok(shell, f"%%cluster --async\n{cell}")
    assert job.wait(240) is JobState.COMPLETED
    p = JobPaths.from_dir(job.record.job_dir)
    values = json.loads(open(p.result).read())["values"]
    # the blob that carries `loot` (on its own, or in the group of values pickled together)
    entry = values.get("loot") or next(e for e in values.values() if "file" in e)
    return job, p, os.path.join(p.outputs, entry["file"]), entry


def test_a_huge_claimed_buffer_is_refused_before_allocation(shell):
    job, _, blob_path, entry = finished_job(shell)
    claim = 3 << 30   # 3 GiB, in a file of a few hundred bytes
    with open(blob_path, "rb") as f:
        data = f.read()
    magic, _, plen = struct.unpack("<4sIQ", data[:16])
    forged = struct.pack("<4sIQ", magic, 1, plen) + struct.pack("<Q", claim) + data[16:]
    with open(blob_path, "wb") as f:
        f.write(forged)
    fresh = new_shell()
    tracemalloc.start()
    try:
        r = run(fresh, f"%cluster result {job.id[:8]}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(r.error_in_exec, IntegrityError)
    assert peak < 256 << 20 and "loot" not in fresh.user_ns
    # without a signed size (the runner's own reader, older results) memory still follows the
    # bytes that exist, not the header's claim
    tracemalloc.start()
    try:
        with pytest.raises(pickle.UnpicklingError, match="truncated"):
            serialize.read_blob(open(blob_path, "rb"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20


def test_a_flipped_bit_names_the_variables_of_the_altered_blob(shell):
    job, _, blob_path, entry = finished_job(shell, "loot = list(range(5))\nhaul = 'gold'")
    assert sorted(entry["names"]) == ["haul", "loot"]   # pickled together, in one group
    with open(blob_path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    fresh = new_shell()
    r = run(fresh, f"%cluster result {job.id[:8]}")
    assert isinstance(r.error_in_exec, IntegrityError)
    message = str(r.error_in_exec)
    assert "outputs 'loot', 'haul' were altered" in message or \
        "outputs 'haul', 'loot' were altered" in message, message
    assert "__ns" not in message and "loot" not in fresh.user_ns


def test_a_raw_pickle_in_place_of_a_result_blob_is_an_integrity_error(shell, tmp_path):
    job, _, blob_path, _ = finished_job(shell)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(blob_path, "wb") as f:
        f.write(pickle.dumps(Evil()))
    fresh = new_shell()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no UnpicklableOutputWarning either
        r = run(fresh, f"%cluster result {job.id[:8]}")
    assert isinstance(r.error_in_exec, IntegrityError)
    assert "loot" not in fresh.user_ns and not marker.exists()


# -- 5: the exit file is signed -------------------------------------------------------------------

def test_a_forged_exit_file_is_an_integrity_error_not_a_completed_job(shell):
    job = sleeper(shell, "victim")
    p = JobPaths.from_dir(job.record.job_dir)
    with open(p.state, "w") as f:
        json.dump({"state": "completed", "exit_code": 0, "host": "forged", "result": True}, f)
    assert job.wait(240) is JobState.FAILED
    rec = job.record
    assert rec.reason.startswith(INTEGRITY) and rec.host != "forged"
    assert rec.result_status == "none"
    # the job itself was stopped
    wait_for(lambda: not alive(rec.native_id), 120, "the forged job's runner to stop")
    r = run(new_shell(), f"%cluster result {job.id[:8]}")
    assert isinstance(r.error_in_exec, IntegrityError)


def test_an_exit_file_signed_for_another_job_is_refused(shell):
    done, done_paths, _, _ = finished_job(shell)
    job = sleeper(shell, "victim2")
    p = JobPaths.from_dir(job.record.job_dir)
    with open(done_paths.state, "rb") as src, open(p.state, "wb") as dst:
        dst.write(src.read())   # a genuine signature, of another job
    assert job.wait(240) is JobState.FAILED
    assert job.record.reason.startswith(INTEGRITY)
    assert done.record.state is JobState.COMPLETED


def test_a_huge_exception_message_is_not_mistaken_for_a_forged_exit_file(shell):
    r = run(shell, "%%cluster\nraise ValueError('é' * 100000)")
    assert isinstance(r.error_in_exec, ValueError) and len(str(r.error_in_exec)) == 100000
    rec = api.list_jobs(limit=1)[0]
    assert rec.state is JobState.FAILED and not rec.reason.startswith(INTEGRITY)


def test_a_cancel_from_another_process_is_the_kernels_word_too(shell):
    job = sleeper(shell, "remote-cancel")
    subprocess.run([sys.executable, "-c", "import sys\nfrom clusterjupyter import api\n"
                    "api.cancel_job(sys.argv[1])", job.id], check=True, env=dict(os.environ))
    assert job.wait(240) is JobState.CANCELLED
    assert job.record.reason == "cancelled by the user"


# -- 7: clear errors instead of raw exceptions ----------------------------------------------------

def test_unreadable_input_gets_a_clear_error(shell):
    r = run(shell, '%%cluster --name "abc\nx = 1')
    assert isinstance(r.error_in_exec, UsageError) and "quotation" in str(r.error_in_exec)
    r = run(shell, "%cluster logs abcd --tail abc")
    assert isinstance(r.error_in_exec, UsageError) and "--tail" in str(r.error_in_exec)
    r = run(shell, "%cluster jobs --limit abc")
    assert isinstance(r.error_in_exec, UsageError) and "--limit" in str(r.error_in_exec)
    r = run(shell, "%cluster jobs --limit 0")
    assert isinstance(r.error_in_exec, UsageError)
    assert api.list_jobs() == []


def test_profiles_file_not_utf8_names_the_file(shell):
    path = paths.profiles_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b'[profiles.hpc]\ndescription = "caf\xe9"\n')
    r = run(shell, "%%cluster hpc\nx = 1")
    assert isinstance(r.error_in_exec, UsageError)
    assert path in str(r.error_in_exec) and "UTF-8" in str(r.error_in_exec)


def test_corrupt_journal_names_the_file_and_the_way_out(shell):
    path = paths.journal_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"this is not a database" * 100)
    r = run(shell, "%cluster jobs")
    err = r.error_in_exec
    assert isinstance(err, JournalError)
    assert path in str(err) and "mv " in str(err)


# -- 8: bad values are refused --------------------------------------------------------------------

def write_profiles(text: str) -> None:
    path = paths.profiles_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_job_name_must_be_a_python_name(shell):
    for bad in ("'not valid'", "1x", "class"):
        r = run(shell, f"%%cluster --job {bad}\nx = 1")
        assert isinstance(r.error_in_exec, UsageError) and "--job" in str(r.error_in_exec)
    assert "not valid" not in shell.user_ns and api.list_jobs() == []


def test_remote_fields_without_a_host_are_refused(shell):
    write_profiles('[profiles.hpc]\nuser = "alice"\nport = 2222\n'
                   'identity_file = "~/.ssh/id_ed25519"\n')
    r = run(shell, "%%cluster hpc\nx = 1")
    assert isinstance(r.error_in_exec, UsageError)
    assert "host" in str(r.error_in_exec) and "user" in str(r.error_in_exec)
    assert api.list_jobs() == []


def test_default_must_be_a_profile_name(shell):
    write_profiles("default = 5\n")
    r = run(shell, "%%cluster\nx = 1")
    assert isinstance(r.error_in_exec, UsageError) and "default" in str(r.error_in_exec)
    write_profiles('defualt = "local"\n')
    r = run(shell, "%%cluster\nx = 1")
    assert isinstance(r.error_in_exec, UsageError) and "profiles" in str(r.error_in_exec)
    assert api.list_jobs() == []


# -- 13: a time limit is a timeout, whoever watches ------------------------------------------------

def test_time_limit_is_a_timeout_every_time_even_with_another_watcher(shell, cj_home):
    # another process polls the journal's active jobs the way the Jupyter server does for the
    # sidebar: it cannot see the local job's exit status, only the exit file
    poller = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom clusterjupyter import api\nwhile True:\n"
         "    api.refresh_active(force=True)\n    time.sleep(0.2)"], env=dict(os.environ))
    try:
        for _ in range(5):
            r = run(shell, "%%cluster --time 2s\nimport time\ntime.sleep(60)")
            rec = api.list_jobs(limit=1)[0]
            assert rec.state is JobState.TIMEOUT, rec.reason
            assert getattr(r.error_in_exec, "state", None) == "timeout"
    finally:
        poller.kill()
        poller.wait()


def test_a_time_limit_is_told_once_in_the_users_units():
    from clusterjupyter.failure import _limit, explain
    from clusterjupyter.journal import JobRecord

    def rec(reason: str, time_limit: int, **kw) -> JobRecord:
        r = JobRecord("a1b2c3d4e5", "cell-1", "p", "slurm", JobState.TIMEOUT, 0.0, "", "",
                      reason=reason, exit_code=kw.pop("exit_code", 0),
                      options={"time": time_limit})
        r.error = {"limit": _limit(r, JobState.TIMEOUT), **kw}
        return r

    # the local scheduler (the runner's SIGXCPU): `--time 2s`
    assert explain(rec("time limit reached", 2, signal="SIGXCPU", exit_code=152)) \
        == "time limit reached (2 s)"
    # a batch scheduler's own words, stopped by its SIGTERM: `--time 90` is 90 minutes
    assert explain(rec("reached its time limit (--time)", 5400, signal="SIGTERM")) \
        == "reached its time limit (--time, 1 h 30 min)"
    # a reason that does not name the limit says which one it was
    assert explain(rec("stopped", 120)) == "stopped (hit its time limit 2 min)"
    # a CPU time limit (PBS cput) is not the wall-clock --time: no --time amount given to it
    assert explain(rec("reached its CPU time limit (cput)", 120)) \
        == "reached its CPU time limit (cput)"


def test_a_failure_is_one_readable_line_without_nested_brackets():
    from clusterjupyter.failure import _limit, explain, summary
    from clusterjupyter.journal import JobRecord

    def rec(state: JobState, reason: str, **err) -> JobRecord:
        r = JobRecord("a1b2c3d4e5", "cell-1", "hpc", "slurm", state, 100.0, "", "",
                      reason=reason, native_id="42", started=100.0, finished=220.0,
                      host="node1", options={"time": 120}, exit_code=err.pop("exit_code", 1))
        r.error = {"limit": _limit(r, state), **err}
        return r

    line = summary(rec(JobState.TIMEOUT, "time limit reached", signal="SIGXCPU"))
    assert line == "job a1b2c3d4 cell-1 [hpc #42] timeout 2m00s on node1 — " \
                   "time limit reached (2 min)"
    line = summary(rec(JobState.TIMEOUT, "reached its time limit (--time)"))
    assert line.endswith("— reached its time limit (--time, 2 min)")
    for text in (line, summary(rec(JobState.TIMEOUT, "time limit reached"))):
        assert "((" not in text and "))" not in text and "\n" not in text
    # the cell's own message keeps its parentheses; what the job adds comes after it
    failed = rec(JobState.FAILED, "", type="builtins.OSError", message="open(x) failed",
                 signal="SIGKILL")
    assert explain(failed) == "the cell raised OSError: open(x) failed (stopped by SIGKILL)"
    running = rec(JobState.RUNNING, "")
    running.finished = running.host = None
    assert summary(running).startswith("job a1b2c3d4 cell-1 [hpc #42] running ")
    assert "—" not in summary(running)
    pending = rec(JobState.PENDING, "Priority")
    pending.started = pending.finished = None
    assert summary(pending) == "job a1b2c3d4 cell-1 [hpc #42] pending — Priority"


def test_time_limit_is_a_timeout_in_a_real_kernel_too(cj_home):
    from jupyter_client.manager import start_new_kernel

    poller = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom clusterjupyter import api\nwhile True:\n"
         "    api.refresh_active(force=True)\n    time.sleep(0.2)"], env=dict(os.environ))
    km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ))
    try:
        kc.execute_interactive("%load_ext clusterjupyter", timeout=60)
        for _ in range(3):
            kc.execute_interactive("%%cluster --time 2s\nimport time\ntime.sleep(60)",
                                   timeout=120)
            rec = api.list_jobs(limit=1)[0]
            assert rec.state is JobState.TIMEOUT, rec.reason
        assert len(api.list_jobs()) == 3
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        poller.kill()
        poller.wait()



def test_every_listing_gives_a_failed_job_the_same_explained_reason():
    from clusterjupyter.failure import listed_reason
    from clusterjupyter.journal import JobRecord
    from clusterjupyter.linemagic import jobs_table
    from clusterjupyter.sweeplist import job_row

    killed = JobRecord("a1b2c3d4e5", "cell-1", "hpc", "slurm", JobState.FAILED, 100.0, "", "",
                       reason="exit code 137", native_id="42", exit_code=137)
    killed.error = {"signal": "SIGKILL"}
    # the listing's words are the explained ones, not the scheduler's raw exit code
    assert listed_reason(killed) == "exit code 137 (stopped by SIGKILL)"
    assert job_row(killed).reason == listed_reason(killed)
    assert jobs_table([job_row(killed)]).splitlines()[1].endswith(listed_reason(killed))
    pending = JobRecord("b1b2c3d4e5", "cell-2", "hpc", "slurm", JobState.PENDING, 100.0, "", "",
                        reason="Priority", native_id="43")
    assert job_row(pending).reason == "Priority"
