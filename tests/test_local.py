"""Kernel-level tests: a real IPython shell runs %%cluster cells on the built-in local backend."""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading

import pytest
from IPython.core.error import UsageError
from IPython.lib.pretty import pretty
from IPython.utils.capture import capture_output

from clusterjupyter import api
from clusterjupyter.errors import CaptureError, IntegrityError, JobFailedError, RemoteError
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.jobs import Job, UnpicklableOutputWarning
from clusterjupyter.failure import summary
from clusterjupyter.states import JobState

from helpers import last_job, wait_for
from shells import new_shell, ok, run


def test_cell_runs_in_another_process_and_pushes_back(shell, capsys):
    ok(shell, "data = [1, 4, 9]")
    value = ok(shell, "%%cluster\nimport math, os\nxs = [math.sqrt(v) for v in data]\n"
                      "print('n =', len(xs))\nworker = os.getpid()\nsum(xs)")
    assert value == 6.0
    assert shell.user_ns["xs"] == [1.0, 2.0, 3.0]
    assert "n = 3" in capsys.readouterr().out
    # provenance: another process, the one the runner recorded
    rec = last_job()
    started = json.loads(open(JobPaths.from_dir(rec.job_dir).started).read())
    assert shell.user_ns["worker"] == started["pid"] != os.getpid()
    assert rec.state is JobState.COMPLETED and rec.result_status == "pushed"
    assert rec.native_id and rec.scheduler == "local"
    assert "math" in shell.user_ns and shell.user_ns["math"].__name__ == "math"


def test_notebook_functions_classes_and_instances(shell):
    ok(shell, "scale = 3\n"
              "class Point:\n    def __init__(self, x): self.x = x\n"
              "    def scaled(self): return Point(self.x * scale)\n"
              "def make(n): return [Point(i) for i in range(n)]")
    ok(shell, "%%cluster\npts = [p.scaled() for p in make(3)]\nlast = pts[-1]")
    pts = shell.user_ns["pts"]
    assert [p.x for p in pts] == [0, 3, 6]
    assert all(isinstance(p, shell.user_ns["Point"]) for p in pts)  # the kernel's own class
    # a class and a lambda defined on the cluster come back by value
    ok(shell, "%%cluster\nclass Remote:\n    kind = 'remote'\nsquare = lambda v: v * v\n"
              "r = Remote()")
    assert shell.user_ns["square"](7) == 49
    assert shell.user_ns["r"].kind == "remote" and isinstance(shell.user_ns["r"],
                                                              shell.user_ns["Remote"])


def test_mutated_inputs_and_deletions_come_back(shell):
    ok(shell, "items = [1, 2]\nconfig = {'a': 1}\nuntouched = [0]\nold = 1")
    ok(shell, "%%cluster\nitems.append(3)\nconfig['b'] = 2\nn = len(untouched)\ndel old")
    assert shell.user_ns["items"] == [1, 2, 3]
    assert shell.user_ns["config"] == {"a": 1, "b": 2}
    assert "old" not in shell.user_ns
    assert shell.user_ns["n"] == 1


def test_exception_keeps_type_and_remote_traceback(shell):
    ok(shell, "class BadInput(ValueError):\n    pass")
    r = run(shell, "%%cluster\nx = 1\ndef check(v):\n    raise BadInput(f'bad {v}')\ncheck(x)")
    err = r.error_in_exec
    assert isinstance(err, shell.user_ns["BadInput"]) and str(err) == "bad 1"
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    # the cell's frames, under the file name the kernel gave the cell (no magic frames)
    cell = shell.compile._filename_map
    assert [(cell[f], line) for f, line in frames if f in cell][-2:] == [(2, 4), (2, 3)]
    # the kernel-side `except` works with the notebook's class; x was still pushed
    assert shell.user_ns["x"] == 1
    assert last_job().state is JobState.FAILED and "BadInput" in last_job().reason


def test_builtin_exception_and_unrebuildable_exception(shell):
    r = run(shell, "%%cluster\n{}['missing']")
    assert isinstance(r.error_in_exec, KeyError)
    r = run(shell, "%%cluster\nimport threading\nclass Odd(Exception):\n"
                   "    def __init__(self):\n        super().__init__('odd')\n"
                   "        self.lock = threading.Lock()\nraise Odd()")
    assert isinstance(r.error_in_exec, RemoteError)
    assert "Odd" in r.error_in_exec.type_name and "raise Odd()" in r.error_in_exec.traceback_text


def test_unpicklable_input_is_named_before_submission(shell):
    ok(shell, "import threading\nlock = threading.Lock()\ngen = (i for i in range(3))")
    r = run(shell, "%%cluster\nwith lock:\n    total = sum(gen)")
    assert isinstance(r.error_in_exec, CaptureError)
    assert set(r.error_in_exec.problems) == {"lock", "gen"}
    assert "lock" in str(r.error_in_exec) and "nothing was submitted" in str(r.error_in_exec)
    assert api.list_jobs() == []
    # --skip leaves a name behind on purpose
    r = run(shell, "%%cluster --skip lock --skip gen\ntotal = 1")
    assert r.success and shell.user_ns["total"] == 1


def test_unpicklable_output_warns_and_the_rest_arrive(shell):
    with pytest.warns(UnpicklableOutputWarning, match="lock"):
        r = run(shell, "%%cluster\nimport threading\nlock = threading.Lock()\nkept = 42")
    assert r.success
    assert shell.user_ns["kept"] == 42 and "lock" not in shell.user_ns


def test_rich_output_and_matplotlib_figures(shell):
    pytest.importorskip("matplotlib")
    with capture_output() as cap:
        ok(shell, "%%cluster\nfrom IPython.display import HTML, display\n"
                  "display(HTML('<b>bold</b>'))\n"
                  "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
                  "print('after')")
    datas = [o.data for o in cap.outputs]
    assert any(d.get("text/html") == "<b>bold</b>" for d in datas)
    assert any("image/png" in d and len(d["image/png"]) > 1000 for d in datas)
    assert "after" in cap.stdout


def test_shell_escapes_run_on_the_cluster(shell, capsys):
    ok(shell, "%%cluster\n!echo from-the-job $$\nfiles = !echo a b")
    assert "from-the-job" in capsys.readouterr().out
    assert shell.user_ns["files"] == ["a b"]


def test_output_streams_while_the_job_runs(shell, tmp_path):
    # the job cannot end before the kernel has shown its first line: it waits for a file that
    # only the kernel's stdout creates, on seeing "first" (no clock involved)
    gate = tmp_path / "first-seen"
    seen = []

    class Tee:
        def write(self, s):
            seen.append(s)
            if "first" in s:
                gate.touch()

        def flush(self):
            pass

    import sys

    old = sys.stdout
    sys.stdout = Tee()
    try:
        ok(shell, "%%cluster\nimport os, time\nprint('first', flush=True)\n"
                  f"waited = 0\nwhile not os.path.exists({str(gate)!r}) and waited < 2400:\n"
                  "    time.sleep(0.05)\n    waited += 1\n"
                  f"print('second', os.path.exists({str(gate)!r}))")
    finally:
        sys.stdout = old
    text = "".join(seen)
    assert "second True" in text and text.index("first") < text.index("second")


def test_async_job_pushes_between_cells(shell, capsys):
    ok(shell, "base = 10")
    job = ok(shell, "%%cluster --async --job j\nimport time\ntime.sleep(0.5)\nanswer = base + 32")
    assert isinstance(job, Job) and shell.user_ns["j"] is job
    assert "answer" not in shell.user_ns
    assert job.wait(240) is JobState.COMPLETED
    ok(shell, "pass")  # values arrive between cells, never in the middle of one
    assert shell.user_ns["answer"] == 42
    assert "pushed time, answer" in capsys.readouterr().out   # in the order the cell bound them
    assert job.outputs()["answer"] == 42
    assert "answer" in job.logs() or job.logs() == ""


def test_interrupt_cancels_the_job(shell, capsys):
    def interrupt_once_running() -> None:   # Ctrl-C while the cell waits on a running job
        wait_for(lambda: api.list_jobs(limit=1) and os.path.exists(
            JobPaths.from_dir(last_job().job_dir).started), 240, "the job to start")
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_once_running)
    thread.start()
    try:
        r = run(shell, "%%cluster\nimport time\ntime.sleep(600)\nnever = 1")
    finally:
        thread.join()
    assert isinstance(r.error_in_exec, KeyboardInterrupt)
    rec = last_job()
    assert rec.state is JobState.CANCELLED
    # one line, no frames of the library's wait loop
    assert f"interrupted; job {rec.id[:8]} on local cancelled" in str(r.error_in_exec)
    assert r.error_in_exec._render_traceback_() == [f"KeyboardInterrupt: {r.error_in_exec}"]
    assert "never" not in shell.user_ns
    # the runner process is gone
    wait_for(lambda: not _alive(int(rec.native_id)), 120, "the runner to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kernel_restart_recovers_result_from_the_journal(shell):
    job = ok(shell, "%%cluster --async\nimport time\ntime.sleep(0.3)\nrecovered = 'yes'\n'value'")
    job_id = job.id
    job.wait(240)
    fresh = new_shell()  # a new kernel: same journal, empty namespace
    assert "recovered" not in fresh.user_ns
    with capture_output() as cap:
        value = ok(fresh, f"%cluster result {job_id[:8]}")
    assert value == "value" and fresh.user_ns["recovered"] == "yes"
    with capture_output() as cap:
        ok(fresh, "%cluster jobs")
    assert job_id[:8] in cap.stdout and "completed" in cap.stdout


def test_tampered_result_is_refused_and_never_unpickled(shell, tmp_path):
    job = ok(shell, "%%cluster --async\nloot = [1, 2, 3]")
    job.wait(240)
    paths = JobPaths.from_dir(job.record.job_dir)
    doc = json.loads(open(paths.result).read())
    entry = doc["values"]["__ns__"]       # "loot", pickled with the other names
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    # replace the output blob with a malicious pickle (framed like a real blob)
    from clusterjupyter import serialize

    blob = serialize.dumps(Evil())
    with open(os.path.join(paths.outputs, entry["file"]), "wb") as f:
        f.write(blob)
    fresh = new_shell()
    r = run(fresh, f"%cluster result {job.id}")
    assert isinstance(r.error_in_exec, IntegrityError)
    assert not marker.exists() and "loot" not in fresh.user_ns
    # the message names the user's variable, never the internal group
    assert "output 'loot' was altered" in str(r.error_in_exec)
    assert "__ns__" not in str(r.error_in_exec)
    # a forged signature does not help either
    with open(paths.result_sig, "w") as f:
        f.write("0" * 64)
    r = run(fresh, f"%cluster result {job.id}")
    assert isinstance(r.error_in_exec, IntegrityError) and not marker.exists()
    assert pickle  # the blob would have run code had it been unpickled


def test_tampered_manifest_is_refused_by_the_runner(shell, tmp_path):
    from clusterjupyter.backends import backend_for

    marker = tmp_path / "pwned"
    ok(shell, "payload = 1")
    job = ok(shell, "%%cluster --async\nimport time\ntime.sleep(0)\nout = payload")
    job.wait(240)
    paths = JobPaths.from_dir(job.record.job_dir)
    # rewrite the manifest to run other code, keep the old signature, run the runner again
    doc = json.loads(open(paths.manifest).read())
    doc["cell"] = f"open({str(marker)!r}, 'w').close()"
    open(paths.manifest, "w").write(json.dumps(doc))
    os.remove(paths.state)
    import subprocess
    import sys

    env = {**os.environ, "CLUSTERJUPYTER_SECRET_FILE":
           os.path.join(os.environ["CLUSTERJUPYTER_HOME"], "config", "secret")}
    code = subprocess.call([sys.executable, "-m", "clusterjupyter.runner", paths.dir], env=env)
    assert code == 70 and not marker.exists()
    state = json.loads(open(paths.state).read())
    assert state["state"] == "failed" and "signature" in state["reason"]
    assert backend_for("local")


def test_time_limit_and_memory_limit_on_the_local_backend(shell):
    r = run(shell, "%%cluster --time 2s\nimport time\ntime.sleep(30)")
    assert isinstance(r.error_in_exec, JobFailedError)
    assert r.error_in_exec.state == "timeout" and last_job().state is JobState.TIMEOUT
    # one reason in the user's words: the limit as given, no signal name, everywhere alike
    rec = last_job()
    assert str(r.error_in_exec).endswith("ended timeout: time limit reached (2 s)")
    assert "SIG" not in str(r.error_in_exec)
    assert summary(rec).endswith(" — time limit reached (2 s)")       # the status line
    assert "] timeout " in summary(rec) and "((" not in summary(rec)
    shown = pretty(ok(shell, f"%cluster status {rec.id[:8]}"))          # %cluster status
    assert "timeout: time limit reached (2 s)" in shown and "SIG" not in shown
    r = run(shell, "%%cluster --mem 300M\nblock = bytearray(1024 * 1024 * 1024)")
    assert last_job().state is JobState.OUT_OF_MEMORY
    assert isinstance(r.error_in_exec, MemoryError)


def test_killed_job_says_why_with_the_log_tail(shell):
    r = run(shell, "%%cluster\nimport os, sys\nprint('about to die', file=sys.stderr, "
                   "flush=True)\nos.kill(os.getpid(), 9)")
    err = r.error_in_exec
    assert isinstance(err, JobFailedError)
    assert "signal 9" in str(err) and "about to die" in str(err)
    assert last_job().state is JobState.FAILED


def test_bad_options_name_the_valid_ones(shell):
    r = run(shell, "%%cluster --tme 5\nx = 1")
    assert isinstance(r.error_in_exec, UsageError)
    assert "--tme" in str(r.error_in_exec) and "--time" in str(r.error_in_exec)
    r = run(shell, "%%cluster --mem lots\nx = 1")
    assert isinstance(r.error_in_exec, UsageError) and "500M" in str(r.error_in_exec)
    r = run(shell, "%%cluster nosuchprofile\nx = 1")
    assert isinstance(r.error_in_exec, UsageError) and "local" in str(r.error_in_exec)
    r = run(shell, "%cluster jbos")
    assert isinstance(r.error_in_exec, UsageError) and "'jobs'" in str(r.error_in_exec)
    r = run(shell, "%cluster logs nosuchjob")
    assert isinstance(r.error_in_exec, UsageError) and "no job" in str(r.error_in_exec)
    r = run(shell, "%%cluster\nx = (")
    assert isinstance(r.error_in_exec, SyntaxError)
    assert api.list_jobs() == []


def test_line_magics_status_logs_cancel_and_dry_run(shell):
    job = ok(shell, "%%cluster --async --name sleeper\nimport time\nprint('tick', flush=True)\n"
                    "time.sleep(60)")
    wait_for(lambda: "tick" in job.logs(), 240, "the job's first line")
    with capture_output() as cap:
        ok(shell, f"%cluster logs {job.id[:8]}")
        ok(shell, "%cluster status sleeper")
    assert "tick" in cap.stdout and "running" in cap.stdout
    with capture_output() as cap:
        ok(shell, f"%cluster cancel {job.id[:8]}")
    assert "cancelled" in cap.stdout and job.state is JobState.CANCELLED
    with capture_output() as cap:
        ok(shell, "%%cluster --dry-run --time 5\ny = 2 * x")
    assert "exec" in cap.stdout and "clusterjupyter.runner" in cap.stdout
    assert "timeout" in cap.stdout and "# outputs: y" in cap.stdout
    with capture_output() as cap:
        ok(shell, "%cluster profiles")
    assert "local" in cap.stdout
    assert len(api.list_jobs()) == 1  # the dry run submitted nothing
