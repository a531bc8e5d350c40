"""The job monitor UI, on real things: a real journal, real local jobs, a real IPython shell,
and (for the cancel button while a cell blocks) a real ZMQ kernel driven by jupyter_client.

Assertions are on widget state (``.value``, ``.children``, HTML), never on screenshots.
"""

from __future__ import annotations

import gc
import html
import os
import re
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from helpers import module_home, wait_for


def text(widget: Any) -> str:
    """What an HTML widget says, without tags and entities."""
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from module_home(tmp_path_factory, "cjhome")


@pytest.fixture(scope="module")
def shell(home: Any) -> Any:
    # %%cluster imports ipykernel (for the kernel id), which swaps comm's manager: do it first
    # so every widget of this module lives in one comm manager
    import ipykernel.ipkernel  # noqa: F401
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()  # a fresh shell, whatever ran before this module
    sh = InteractiveShell.instance()
    sh.run_cell("%load_ext clusterjupyter")
    yield sh
    InteractiveShell.clear_instance()


@pytest.fixture
def panel(shell: Any) -> Any:
    from clusterjupyter.widgets import Panel

    p = Panel(shell=shell)
    yield p
    p.close()


def submit(shell: Any, body: str, name: str, profile: str = "") -> Any:
    """Submit ``body`` as an --async %%cluster cell; return the Job."""
    r = shell.run_cell(f"%%cluster {profile} --async --name {name}\n{body}")
    assert r.error_in_exec is None and r.error_before_exec is None, r
    return r.result


def state(job_id: str) -> str:
    from clusterjupyter import api

    return api.journal().get(job_id).state.value


def cancel_quietly(job: Any) -> None:
    from clusterjupyter import api

    try:
        api.cancel_job(job.id)
    except Exception:
        pass


# -- Jobs tab --------------------------------------------------------------------------------
def test_rows_show_live_states(shell: Any, panel: Any) -> None:
    sleeper = submit(shell, "import time; time.sleep(30)", "sleeper")
    quick = submit(shell, "answer = 6 * 7", "quick")
    try:
        rows = panel.jobs.rows
        wait_for(lambda: sleeper.id in rows and quick.id in rows, what="rows for both jobs")
        wait_for(lambda: "cj-running" in rows[sleeper.id].html.value, what="running badge")
        wait_for(lambda: "cj-completed" in rows[quick.id].html.value, what="completed badge")
        html = rows[sleeper.id].html.value
        assert "sleeper" in html and sleeper.id[:8] in html and "local" in html
        assert rows[sleeper.id].cancel.disabled is False
        assert rows[quick.id].cancel.disabled is True
        assert rows[quick.id].push.disabled is False
        # the table's children are the rows, newest first
        boxes = panel.jobs.table.children
        assert boxes.index(rows[quick.id].box) < boxes.index(rows[sleeper.id].box)
        assert "running" in panel.jobs.counts.value
    finally:
        cancel_quietly(sleeper)


def test_escapes_everything(shell: Any, panel: Any) -> None:
    job = submit(shell, "x = 1", "a<b>&c")
    wait_for(lambda: job.id in panel.jobs.rows)
    html = panel.jobs.rows[job.id].html.value
    assert "a&lt;b&gt;&amp;c" in html and "a<b>" not in html


def test_cancel_button_cancels_the_real_job(shell: Any, panel: Any) -> None:
    job = submit(shell, "import time; time.sleep(60)", "to-cancel")
    row = wait_for(lambda: panel.jobs.rows.get(job.id))
    wait_for(lambda: state(job.id) == "running", what="job running")
    row.cancel.click()
    wait_for(lambda: state(job.id) == "cancelled", what="journal says cancelled")
    wait_for(lambda: "cj-cancelled" in panel.jobs.rows[job.id].html.value, what="badge")
    assert "cancel" in text(panel.jobs.message)
    assert panel.jobs.rows[job.id].cancel.disabled is True


def test_logs_view_follows_stdout(shell: Any, panel: Any) -> None:
    job = submit(shell, "import time\nprint('first-line', flush=True)\ntime.sleep(2)\n"
                        "print('second-line', flush=True)\ntime.sleep(30)", "talker")
    try:
        row = wait_for(lambda: panel.jobs.rows.get(job.id))
        wait_for(lambda: "first-line" in job.logs(), what="the job printed")
        row.logs.click()
        assert panel.jobs.log_box.layout.display == ""
        wait_for(lambda: "first-line" in panel.jobs.log_view.value, what="stdout in the view")
        assert job.id[:8] in panel.jobs.log_title.value
        # it keeps following while the job runs
        wait_for(lambda: "second-line" in panel.jobs.log_view.value, what="followed output")
        panel.jobs.log_stream.value = "scheduler"
        wait_for(lambda: "second-line" not in panel.jobs.log_view.value, what="stream switch")
        panel.jobs.log_close.click()
        assert panel.jobs.log_box.layout.display == "none"
    finally:
        cancel_quietly(job)


def test_push_result_into_user_ns(shell: Any, panel: Any) -> None:
    from clusterjupyter import api

    shell.user_ns.pop("pushed_value", None)
    job = submit(shell, "pushed_value = 41 + 1", "pusher")
    wait_for(lambda: state(job.id) == "completed")
    row = wait_for(lambda: panel.jobs.rows.get(job.id))
    wait_for(lambda: not row.push.disabled, what="push enabled")
    assert "pushed_value" not in shell.user_ns  # no cell ran since: nothing pushed it yet
    row.push.click()
    assert shell.user_ns["pushed_value"] == 42
    assert api.journal().get(job.id).result_status == "pushed"
    assert "pushed pushed_value" in text(panel.jobs.message)


def test_push_of_a_failed_cell_says_so(shell: Any, panel: Any) -> None:
    job = submit(shell, "partial = 1\nraise ValueError('boom-in-job')", "raiser")
    wait_for(lambda: state(job.id) == "failed")
    row = wait_for(lambda: panel.jobs.rows.get(job.id))
    row.push.click()
    assert shell.user_ns["partial"] == 1
    said = text(panel.jobs.message)
    assert "ValueError" in said and "boom-in-job" in said
    panel.jobs.reload()
    assert "result pushed" not in text(row.html)  # a failed job's row says why it failed
    assert "the cell raised ValueError: boom-in-job" in text(row.html)
    # the logs button of a failed job opens on why it failed (kept in the journal)
    row.logs.click()
    assert panel.jobs.log_stream.value == "error"
    wait_for(lambda: "Traceback" in panel.jobs.log_view.value, what="the error view")
    assert "<details" in panel.jobs.log_view.value and " open" in panel.jobs.log_view.value
    panel.jobs.log_stream.value = "stderr"
    wait_for(lambda: "(stderr is empty)" in text(panel.jobs.log_view), what="empty stderr")
    panel.jobs.hide_logs()


def test_profiles_tab_opens_on_the_default_with_human_labels(panel: Any) -> None:
    from clusterjupyter.profiles import default_profile_name

    tab = panel.profiles
    assert tab.loaded == default_profile_name()
    assert tab.inputs["name"].value == default_profile_name()
    labels = [row.children[0].value for row in tab.widget.children[0].children[1].children
              if hasattr(row, "children") and row.children and
              isinstance(getattr(row.children[0], "value", None), str)
              and "cj-label" in row.children[0].value]
    joined = " ".join(labels)
    assert "SSH key file" in joined and 'title="identity_file in profiles.toml"' in joined
    assert "Send the runner with each job" in joined


def test_filters(shell: Any, home: Any, panel: Any) -> None:
    from clusterjupyter.profiles import Profile, save_profile

    save_profile(Profile.from_dict("other", {"scheduler": "local",
                                             "workdir": str(home / "other-work")}))
    panel.jobs.update_profiles()
    assert "other" in [v for _, v in panel.jobs.profile_filter.options]
    elsewhere = submit(shell, "y = 2", "on-other", profile="other")
    sleeper = submit(shell, "import time; time.sleep(30)", "filtered-sleeper")
    try:
        wait_for(lambda: state(elsewhere.id) == "completed")
        wait_for(lambda: state(sleeper.id) == "running")
        panel.jobs.profile_filter.value = "other"
        assert set(panel.jobs.rows) == {elsewhere.id}
        assert "on-other" in panel.jobs.rows[elsewhere.id].html.value
        panel.jobs.profile_filter.value = ""
        panel.jobs.state_filter.value = "running"
        assert sleeper.id in panel.jobs.rows
        assert all(r.record.state.value == "running" for r in panel.jobs.rows.values())
        panel.jobs.state_filter.value = "active"
        assert sleeper.id in panel.jobs.rows and elsewhere.id not in panel.jobs.rows
        panel.jobs.state_filter.value = "timeout"
        assert panel.jobs.table.children == ()
        assert "match these filters" in text(panel.jobs.empty)
    finally:
        cancel_quietly(sleeper)


def api_job_state(job_id: str) -> str:
    from clusterjupyter import api

    return api.get_job(job_id).state.value


def test_jobs_from_other_processes_are_refreshed(shell: Any, panel: Any, home: Any) -> None:
    """A job another process submitted and left pending is followed by the backends' monitor."""
    import subprocess

    code = ("import os\nfrom IPython.core.interactiveshell import InteractiveShell\n"
            "sh = InteractiveShell.instance()\nsh.run_cell('%load_ext clusterjupyter')\n"
            "r = sh.run_cell('%%cluster --async --name from-elsewhere\\nz = 5')\n"
            "print(r.result.id)\nos._exit(0)\n")  # exit before its own monitor notices the end
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ, timeout=60)
    job_id = out.stdout.strip().splitlines()[-1]
    wait_for(lambda: job_id in panel.jobs.rows, what="the other process's job")
    wait_for(lambda: "cj-completed" in panel.jobs.rows[job_id].html.value,
             what="completed, seen through refresh()")
    assert api_job_state(job_id) == "completed"


# -- Profiles tab ----------------------------------------------------------------------------
def test_profiles_form_saves_a_valid_profile(panel: Any) -> None:
    from clusterjupyter.paths import profiles_path
    from clusterjupyter.profiles import load_profiles

    tab = panel.profiles
    tab.new_button.click()
    tab.inputs["name"].value = "hpc"
    tab.inputs["scheduler"].value = "slurm"
    tab.inputs["host"].value = "login.example.org"
    tab.inputs["port"].value = "2222"
    tab.inputs["prelude"].value = "module load python/3.11\n"
    tab.inputs["env"].value = "OMP_NUM_THREADS = 4"
    tab.inputs["resources"].value = "time = 1h\nmem = 4G\ncpus = 2"
    tab.save_button.click()
    assert "saved profile 'hpc'" in text(tab.message), tab.message.value
    assert all(e.value == "" for e in tab.errors.values())
    p = load_profiles()["hpc"]
    assert (p.scheduler, p.host, p.port) == ("slurm", "login.example.org", 2222)
    assert p.prelude == ["module load python/3.11"] and p.env == {"OMP_NUM_THREADS": "4"}
    assert p.resources == {"time": "1h", "mem": "4G", "cpus": 2}
    with open(profiles_path()) as f:
        assert "login.example.org" in f.read()
    assert "hpc" in [v for _, v in tab.select.options]
    # the other tabs learn about it
    assert "hpc" in panel.queue.profile.options
    # loading it back fills the form
    tab.new_button.click()
    tab.select.value = "hpc"
    assert tab.inputs["port"].value == "2222" and "time = 1h" in tab.inputs["resources"].value


@pytest.mark.parametrize("field, value, expect", [
    ("port", "abc", "whole number"),
    ("scheduler", "nosuchscheduler", "unknown scheduler"),
    ("name", "bad name!", "letters"),
    ("env", "not a pair", "KEY = value"),
    ("resources", "mem = lots", "mem"),
])
def test_profiles_form_shows_field_errors(panel: Any, field: str, value: str,
                                          expect: str) -> None:
    from clusterjupyter.paths import profiles_path

    before = open(profiles_path()).read() if os.path.exists(profiles_path()) else ""
    tab = panel.profiles
    tab.new_button.click()
    tab.inputs["name"].value = "broken"
    tab.inputs[field].value = value
    tab.save_button.click()
    err = text(tab.errors[field])
    assert expect in err, (field, err, tab.message.value)
    assert "not saved" in text(tab.message)
    others = [f for f, e in tab.errors.items() if e.value and f != field]
    assert others == []
    after = open(profiles_path()).read() if os.path.exists(profiles_path()) else ""
    assert after == before


def test_delete_and_default(panel: Any) -> None:
    from clusterjupyter.profiles import default_profile_name, load_profiles

    tab = panel.profiles
    tab.new_button.click()
    tab.inputs["name"].value = "scratch"
    tab.save_button.click()
    tab.select.value = "scratch"
    tab.default_button.click()
    assert default_profile_name() == "scratch"
    assert "★" in dict((v, k) for k, v in tab.select.options)["scratch"]
    tab.select.value = "scratch"
    tab.delete_button.click()
    assert "scratch" not in load_profiles() and default_profile_name() == "local"
    tab.select.value = "local"
    tab.delete_button.click()  # the built-in one is not in the file
    assert "cannot be deleted" in text(tab.message)


def test_test_connection_on_local(panel: Any) -> None:
    from clusterjupyter.widgets import check_profile

    result = check_profile("local")
    assert result["ok"], result
    assert [s["name"] for s in result["steps"]] == ["backend", "python", "scheduler",
                                                    "environment"]
    assert all(s["seconds"] >= 0 for s in result["steps"])
    assert sys.version.split()[0] in result["steps"][1]["detail"]

    tab = panel.profiles
    tab.select.value = "local"
    tab.test_button.click()
    wait_for(lambda: "cj-health" in tab.health.value, what="health result")
    assert "cj-health-ok" in tab.health.value and "python" in text(tab.health)


def test_test_connection_reports_a_broken_interpreter(panel: Any) -> None:
    tab = panel.profiles
    tab.new_button.click()
    tab.inputs["name"].value = "badpython"
    tab.inputs["python"].value = "/nonexistent/python3"
    tab.test_button.click()
    wait_for(lambda: "cj-health" in tab.health.value, what="health result")
    assert "cj-health-failed" in tab.health.value and "python failed" in text(tab.health)


# -- Queue tab -------------------------------------------------------------------------------
def test_queue_lists_local_runners_with_actions(shell: Any, panel: Any) -> None:
    job = submit(shell, "import time; time.sleep(60)", "queued")
    try:
        wait_for(lambda: state(job.id) == "running")
        q = panel.queue
        q.profile.value = "local"
        assert q.refresh()

        def listed() -> Any:
            q._reader.wait()
            return [e for e in q.entries if e.name == job.id[:8]]

        entry = wait_for(lambda: listed() or (q.refresh() and False), what="runner listed")[0]
        row = q.rows[q.entries.index(entry)]
        assert job.id[:8] in row.children[0].value and "cj-running" in row.children[0].value
        assert "queued" in row.children[0].value  # the journal's name, not a hash
        assert text(row.children[0]).count("running") == 1  # not "running running"
        hold = next(b for b in row.children[1:] if b.description == "hold")
        hold.click()
        q._actions.wait()
        assert "cannot hold" in text(q.message)  # shown in the panel, not raised
        cancel = next(b for b in row.children[1:] if b.description == "cancel")
        cancel.click()
        q._actions.wait()
        wait_for(lambda: state(job.id) == "cancelled", what="cancelled through the queue tab")
    finally:
        cancel_quietly(job)


def test_queue_errors_are_shown(panel: Any) -> None:
    from clusterjupyter.profiles import Profile, save_profile

    # nothing listens on port 9 here: the connection is refused -> an error in the tab
    save_profile(Profile.from_dict("noqueue", {"scheduler": "local", "host": "127.0.0.1",
                                               "port": 9, "accept_unknown_host": True}))
    panel.queue.update_profiles()
    panel.tabs.selected_index = 2  # opening the tab reads the queue, as does choosing a profile
    panel.queue.profile.value = "noqueue"
    wait_for(lambda: "cannot read the queue of noqueue" in text(panel.queue.message),
             what="the error in the tab")
    assert panel.queue.table.children == ()


def test_metrics_tab_shows_what_the_journal_counted(shell: Any, panel: Any) -> None:
    from clusterjupyter import metrics

    ok_job = submit(shell, "m = 1", "metrics-ok")
    bad_job = submit(shell, "raise ValueError('metrics')", "metrics-bad")
    wait_for(lambda: state(ok_job.id) == "completed" and state(bad_job.id) == "failed",
             what="both jobs ended")
    panel.tabs.selected_index = 3            # opening the tab reads the journal
    figures = metrics.collect()["local"]
    table = text(panel.metrics.table)
    assert "local" in table and f"{figures.errors}" in table and figures.errors >= 1
    assert figures.states["completed"] >= 1
    assert f"completed</span> {figures.states['completed']}" in panel.metrics.table.value
    before = figures.counters.get("submissions", 0)
    done = submit(shell, "m = 2", "metrics-more")
    wait_for(lambda: state(done.id) == "completed", what="a third job")
    panel.metrics.refresh_button.click()     # refresh reads the journal again
    after = metrics.collect()["local"].counters.get("submissions", 0)
    assert after == before + 1 and f"{after}" in text(panel.metrics.table)


# -- JobStatus -------------------------------------------------------------------------------
def test_job_status_text_fallback_without_a_kernel(shell: Any) -> None:
    from clusterjupyter import api
    from clusterjupyter.widgets import JobStatus

    job = submit(shell, "w = 3", "text-status")
    st = JobStatus(shell, job.record)
    assert st.widget is None and st.handle is None  # plain shell: silent
    wait_for(lambda: state(job.id) == "completed")
    st.update(api.journal().get(job.id))
    assert "completed" in st.last and job.id[:8] in st.last


def test_job_status_widget_lives_and_cancels(shell: Any) -> None:
    from clusterjupyter.widgets import JobStatus
    from clusterjupyter.widgets._live import hub

    job = submit(shell, "import time\nfor i in range(100):\n    print('line', i, flush=True)\n"
                        "    time.sleep(0.3)", "widget-status")
    st = JobStatus(shell, job.record, mode="widget", show=False)
    assert st in hub.subscribers()
    wait_for(lambda: "cj-running" in st.badge.value, what="running badge")
    assert "widget-status" in st.info.value and job.id[:8] in st.info.value
    time.sleep(1.0)
    assert "line" not in text(st.info)  # the output is the cell's, not repeated here
    st.cancel_button.click()
    wait_for(lambda: st.settled, what="settled")
    assert state(job.id) == "cancelled"
    assert "cj-cancelled" in st.badge.value and "cancelled by the user" in st.info.value
    assert "after" in st.info.value  # duration
    assert "exit code" not in text(st.info) and "143" not in text(st.info)
    assert st.cancel_button.layout.display == "none"
    assert st not in hub.subscribers()
    wait_for(lambda: "cancelled by the user" in st.final_html, what="static summary")
    assert "line" not in st.final_html


def test_job_status_final_summary(shell: Any) -> None:
    from clusterjupyter.widgets import JobStatus

    job = submit(shell, "import socket; h = socket.gethostname()", "summary")
    st = JobStatus(shell, job.record, mode="widget", show=False)
    wait_for(lambda: st.settled, what="settled")
    assert "cj-completed" in st.badge.value
    import socket

    assert f"on {socket.gethostname()}" in st.info.value
    assert "cj-static" in st.final_html and "<details" not in st.final_html


def test_job_status_failure_shows_why(shell: Any) -> None:
    from clusterjupyter.widgets import JobStatus

    job = submit(shell, "import sys; print('to-stderr', file=sys.stderr)\n"
                        "raise RuntimeError('bad-cell')", "failing")
    st = JobStatus(shell, job.record, mode="widget", show=False)
    wait_for(lambda: st.settled, what="settled")
    assert "cj-failed" in st.badge.value and "RuntimeError" in st.info.value
    # the static HTML that replaces the widget folds the remote traceback and the log tail
    wait_for(lambda: "Traceback" in st.final_html, what="remote traceback")
    assert "to-stderr" in st.final_html and "bad-cell" in st.final_html
    assert "<details" in st.final_html


def test_job_status_display_becomes_static_html(shell: Any, monkeypatch: Any) -> None:
    """Once the job ends, the cell's one display holds HTML only: a notebook reopened or a
    restarted kernel never meets a widget model it no longer has."""
    import IPython.display

    from clusterjupyter.widgets import JobStatus, status

    from clusterjupyter.widgets._fallback import MARK

    shown: list[dict] = []
    marks: list[dict | None] = []

    class Handle:
        def update(self, bundle: dict, raw: bool = False, metadata: dict | None = None) -> None:
            shown.append(bundle)
            marks.append(metadata)

    def fake_display(bundle: dict, raw: bool = False, display_id: bool = False,
                     metadata: dict | None = None) -> Handle:
        shown.append(bundle)
        marks.append(metadata)
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    job = submit(shell, "import time; time.sleep(0.5)", "static")
    st = JobStatus(shell, job.record, mode="widget")
    assert status.VIEW_MIME in shown[0]
    # while live, the display carries its static alternative for a frontend that lost it
    assert marks[0] == MARK and "cj-static" in shown[0]["text/html"]
    assert f"%cluster status {job.id[:8]}" in shown[0]["text/html"]
    wait_for(lambda: st.settled and shown[-1].get("text/html", "").count("completed"),
             what="static final display")
    assert status.VIEW_MIME not in shown[-1]
    assert st.widget is not None and st.widget.comm is None  # the widgets are closed


def test_a_sweep_is_one_row_that_unfolds_into_its_elements(shell: Any, panel: Any) -> None:
    """A sweep run on the local backend: one row in the Jobs tab with its one state and its
    element counts; its elements, each with its own row (logs, state), unfold below it."""
    r = shell.run_cell('%%cluster local --sweep "x in [1, 2, 0]" --job swp --name grid\n'
                       "y = 10 / x")
    assert r.error_in_exec is None, r
    sw = shell.user_ns["swp"]
    assert sw.done() and len(sw.failed()) == 1
    tab = panel.jobs
    tab.reload()
    srow = tab.sweeps[sw.id]
    assert srow.box in tab.table.children
    html_ = html.unescape(srow.html.value)
    assert "grid [3]" in html_ and "2 done" in html_ and "1 failed" in html_
    assert "cj-failed" in srow.html.value  # some element failed: the sweep's one state
    ids = {e.job.id for e in sw.elements}
    # the elements are not rows of the table itself, but below the sweep's row
    assert all(tab.rows[i].box not in tab.table.children for i in ids)
    assert [tab.rows[e.job.id].box for e in sw.elements] == list(srow.elements.children)
    assert srow.elements.layout.display == "none"
    srow.toggle.click()
    assert srow.elements.layout.display == "" and srow.toggle.description == "fold"
    failed = tab.rows[sw.failed()[0].job.id]
    assert "ZeroDivisionError" in html.unescape(failed.html.value)
    assert srow.cancel.disabled  # nothing left to cancel


def test_panel_display_carries_a_static_alternative(shell: Any) -> None:
    """What a frontend that lost the panel's widget shows instead (see widgets/_fallback.py)."""
    from clusterjupyter.widgets import Panel
    from clusterjupyter.widgets._fallback import MARK, VIEW_MIME

    p = Panel(shell=shell)
    try:
        data, metadata = p._repr_mimebundle_()
        assert data[VIEW_MIME]["model_id"] == p.model_id
        assert metadata == MARK and "%cluster panel" in data["text/html"]
    finally:
        p.close()


# -- lifetime --------------------------------------------------------------------------------
def test_closed_or_dropped_panels_stop_updating(shell: Any, monkeypatch: Any) -> None:
    from clusterjupyter.widgets import Panel
    from clusterjupyter.widgets._live import hub

    p = Panel(shell=shell)
    assert p in hub.subscribers()
    p.close()
    assert p not in hub.subscribers() and p.comm is None
    assert all(r.box.comm is None for r in p.jobs.rows.values())
    ref = weakref.ref(p)
    del p
    # nothing keeps it alive (the updater thread holds it only during a tick in flight)
    wait_for(lambda: gc.collect() >= 0 and ref() is None, 5, "the panel to be collected")

    monkeypatch.setattr(hub, "linger", 0.5)
    wait_for(lambda: not hub.subscribers() or all(
        getattr(s, "settled", False) or getattr(s, "closed", False) for s in hub.subscribers()))
    wait_for(lambda: not hub.running, what="the updater thread ends when nobody listens")


# -- a real kernel ---------------------------------------------------------------------------
class Kernel:
    """A real ipykernel over ZMQ (jupyter_client), as a frontend sees it."""

    def __init__(self, home: str):
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, "CLUSTERJUPYTER_HOME": home})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.buttons: dict[str, set[str]] = {}   # dom class -> comm ids
        self.updates: list[dict] = []

    def send(self, code: str, cell_id: str | None = None) -> str:
        msg = self.kc.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True},
            metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def run(self, code: str, cell_id: str | None = None, timeout: float = 60,
            during: Callable[[float], None] | None = None) -> dict:
        """Execute ``code``; ``during(elapsed)`` is called as messages arrive."""
        msg_id = self.send(code, cell_id)
        t0 = time.time()
        out: dict = {"stdout": "", "error": None, "ended": None}
        while True:
            m = self.kc.get_iopub_msg(timeout=timeout)
            kind, c = m["msg_type"], m["content"]
            if kind == "comm_open":
                classes = c["data"]["state"].get("_dom_classes", [])
                for cls in classes:
                    self.buttons.setdefault(cls, set()).add(c["comm_id"])
            elif kind == "comm_msg":
                self.updates.append(c)
            elif kind == "stream" and m["parent_header"].get("msg_id") == msg_id:
                out["stdout"] += c["text"]
            elif kind == "error" and m["parent_header"].get("msg_id") == msg_id:
                out["error"] = f"{c['ename']}: {c['evalue']}"
            elif kind == "status" and c["execution_state"] == "idle" \
                    and m["parent_header"].get("msg_id") == msg_id:
                out["ended"] = time.time() - t0
                return out
            if during is not None:
                during(time.time() - t0)

    def click(self, comm_id: str) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
            "method": "custom", "content": {"event": "click"}}})
        self.kc.shell_channel.send(msg)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = Kernel(str(tmp_path_factory.mktemp("kernelhome")))
    r = k.run("%load_ext clusterjupyter\nfrom clusterjupyter.widgets import Panel")
    assert r["error"] is None, r
    yield k
    k.close()


def _click_once(k: Kernel, cls: str, after: float, state: dict) -> Callable[[float], None]:
    def during(elapsed: float) -> None:
        ids = k.buttons.get(cls, set()) - state.setdefault("seen", set())
        if elapsed > after and ids and "clicked" not in state:
            state["clicked"] = elapsed
            k.click(sorted(ids)[0])
    return during


def test_kernel_cancel_button_works_while_the_cell_blocks(kernel: Kernel) -> None:
    clicked: dict = {"seen": set(kernel.buttons.get("cj-cancel", set()))}
    r = kernel.run("%%cluster --name blocking\nimport time\nfor i in range(600):\n"
                   "    print('tick', i, flush=True); time.sleep(0.5)",
                   during=_click_once(kernel, "cj-cancel", 3.0, clicked))
    assert "clicked" in clicked, "no cancel button was displayed"
    assert r["error"] is not None and r["error"].startswith("JobCancelledError"), r["error"]
    assert r["ended"] - clicked["clicked"] < 10, "the click waited for the cell to end"
    assert "tick 1" in r["stdout"]
    # the status line kept updating from the background thread while the main thread waited
    assert any("cj-running" in str(u["data"].get("state", {}).get("value", ""))
               for u in kernel.updates)
    check = kernel.run("from clusterjupyter import api\n"
                       "print(api.list_jobs(limit=1)[0].state.value)")
    assert check["stdout"].strip() == "cancelled"


def test_kernel_panel_updates_and_cancels_while_busy(kernel: Kernel) -> None:
    r = kernel.run("p = Panel()\ndisplay(p)")
    assert r["error"] is None, r
    r = kernel.run("%%cluster --async --name bg-quick\nimport time; time.sleep(1)")
    assert r["error"] is None, r
    kernel.updates.clear()
    # the kernel is busy with another cell; the panel still sees the job finish
    r = kernel.run("import time; time.sleep(6)")
    assert any("bg-quick" in str(u["data"].get("state", {}).get("value", ""))
               and "cj-completed" in str(u["data"].get("state", {}).get("value", ""))
               for u in kernel.updates), "no row update while the kernel was busy"
    # a blocking cell, cancelled from the panel's row button while it blocks
    seen = set(kernel.buttons.get("cj-row-cancel", set()))
    clicked: dict = {"seen": seen}
    r = kernel.run("%%cluster --name panel-cancelled\nimport time; time.sleep(300)",
                   during=_click_once(kernel, "cj-row-cancel", 2.0, clicked))
    assert "clicked" in clicked, "the panel showed no row for the blocking job"
    assert r["error"] is not None and r["error"].startswith("JobCancelledError"), r["error"]
    assert r["ended"] - clicked["clicked"] < 10
    r = kernel.run("p.close()")
    assert r["error"] is None


def test_kernel_rerun_cell_closes_the_old_panel(kernel: Kernel) -> None:
    r = kernel.run("first = Panel(); display(first)", cell_id="cell-A")
    assert r["error"] is None, r
    r = kernel.run("second = Panel(); display(second)", cell_id="cell-A")
    r = kernel.run("print(first.closed, second.closed)")
    assert r["stdout"].split() == ["True", "False"]
    kernel.run("second.close()")


# -- a real frontend -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``jupyter lab`` on a free loopback port, in temporary Jupyter and clusterjupyter homes."""
    import socket
    import subprocess
    import urllib.request

    import nbformat

    base = tmp_path_factory.mktemp("widgetlab")
    root, home, jup = base / "root", base / "home", base / "jupyter"
    for d in (root, home, jup / "config", jup / "data", jup / "runtime"):
        d.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "%load_ext clusterjupyter",
        "%%cluster --async --name browser-quick\nanswer = 6 * 7",
        "%cluster panel",
        "%%cluster --name browser-blocking\nimport time\nfor i in range(600):\n"
        "    print('tick', i, flush=True); time.sleep(0.5)")]
    nbformat.write(nb, str(root / "w.ipynb"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = os.urandom(16).hex()
    env = {**os.environ, "CLUSTERJUPYTER_HOME": str(home),
           "JUPYTER_CONFIG_DIR": str(jup / "config"), "JUPYTER_DATA_DIR": str(jup / "data"),
           "JUPYTER_RUNTIME_DIR": str(jup / "runtime")}
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            f"--LabApp.workspaces_dir={jup / 'workspaces'}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = base / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(ready, 90, "jupyter lab")
        yield f"{url}lab/tree/w.ipynb?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.browser
def test_browser_jupyterlab_status_cancel_and_panel(jupyterlab: str) -> None:
    """In JupyterLab 4 (headless Chromium): the status widget and the panel render, the
    cancel button stops a blocking cell while it blocks, and the panel follows."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CLUSTERJUPYTER_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.set_default_timeout(60_000)
            page.goto(jupyterlab)
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            kernel_idle = ("() => window.jupyterapp.shell.currentWidget?.sessionContext?.session"
                           "?.kernel?.status === 'idle'")

            def kernel_ready() -> bool:
                if page.locator(".jp-Dialog").count():  # the kernel chooser may ask once
                    page.locator(".jp-Dialog .jp-mod-accept").first.click()
                return bool(page.evaluate(kernel_idle))

            wait_for(kernel_ready, 60, "the kernel")
            # not awaited: the promise settles only when the last (blocking) cell ends
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            status = page.locator(".cj-job-status").last
            status.locator(".cj-badge.cj-running").wait_for()
            page.locator(".cj-job-status").first.locator(".cj-completed").wait_for()
            page.locator(".cj-panel .cj-job-row").filter(has_text="browser-blocking") \
                .locator(".cj-running").wait_for()
            output = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-OutputArea")
            wait_for(lambda: "tick 3" in output.inner_text(), 30, "the streamed output")
            assert "tick" not in status.inner_text()  # the output is not repeated in the status
            kernel_status = ("() => window.jupyterapp.shell.currentWidget?.sessionContext"
                             "?.session?.kernel?.status")
            assert page.evaluate(kernel_status) == "busy"  # while any %%cluster cell runs
            clicked = time.time()
            status.locator(".cj-cancel").click()
            page.get_by_text("JobCancelledError").first.wait_for()
            assert time.time() - clicked < 15, "the click waited for the cell to end"
            status = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".cj-job-status")
            status.locator(".cj-badge.cj-cancelled").wait_for()
            assert "cancelled by the user" in status.inner_text()
            # the finished status is static HTML: no widget to go missing after a restart
            page.locator(".jp-Notebook .jp-CodeCell").last.locator(".cj-static").wait_for()
            assert "143" not in status.inner_text()
            page.locator(".cj-panel .cj-job-row").filter(has_text="browser-blocking") \
                .locator(".cj-cancelled").wait_for()
        except Exception:
            shots = os.path.join(os.path.dirname(os.path.dirname(__file__)), "test-artifacts")
            os.makedirs(shots, exist_ok=True)
            page.screenshot(path=os.path.join(shots, "failed-widgets-browser.png"),
                            full_page=True)
            raise
        finally:
            browser.close()
