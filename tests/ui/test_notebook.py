"""``%%cluster`` cells in a real JupyterLab notebook (headless Chromium): kernel status, the
status line, failures, the panel, and what a restarted kernel shows."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from test_sidebar import make_notebook, open_lab, run_next_cell

from clusterjupyter import api
from clusterjupyter.states import JobState

pytestmark = pytest.mark.browser

KERNEL_STATUS = ("() => window.jupyterapp.shell.currentWidget?.sessionContext?.session"
                 "?.kernel?.status")


def wait_idle(page: Page) -> None:
    page.wait_for_function(f"() => ({KERNEL_STATUS})() === 'idle'", timeout=60_000)


def open_notebook(page: Page, lab, name: str) -> None:
    """Open ``name`` alone (earlier notebooks closed), run its first cell, wait for it."""
    # a workspace of its own: no notebook of an earlier test is restored beside it
    open_lab(page, lab, f"lab/workspaces/{name.replace('.', '-')}/tree/{name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_idle(page)
    run_next_cell(page)
    expect(page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt")).to_have_text(
        "[1]:", timeout=60_000)


def test_first_cluster_cell_keeps_the_kernel_busy(page: Page, lab) -> None:
    """The frontend's create-subshell request, answered by "idle" while the first %%cluster
    cell runs, does not leave the kernel shown as idle."""
    name = make_notebook(lab, "busy.ipynb", [
        "%load_ext clusterjupyter",
        "%%cluster local --name first-blocking\nimport time\nfor i in range(12):\n"
        "    print('tick', i, flush=True); time.sleep(0.5)",
    ])
    open_lab(page, lab, f"lab/workspaces/busy/tree/{name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_idle(page)
    run_next_cell(page)
    expect(page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt")).to_have_text(
        "[1]:", timeout=60_000)
    # every status message from here on, with the request it answers (shown on failure)
    page.evaluate("""() => {
        window.cjStatus = [];
        const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        kernel.iopubMessage.connect((_, msg) => {
            if (msg.header.msg_type === 'status') {
                window.cjStatus.push(`${msg.parent_header.msg_type}:${msg.content.execution_state}`);
            }
        });
    }""")
    run_next_cell(page)
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    cell.locator(".cj-badge.cj-running").wait_for(timeout=60_000)
    seen = []
    deadline = time.time() + 3
    while time.time() < deadline:
        seen.append(page.evaluate(KERNEL_STATUS))
        time.sleep(0.1)
    assert set(seen) == {"busy"}, page.evaluate("() => window.cjStatus")
    expect(cell.locator(".cj-static")).to_be_visible(timeout=60_000)
    wait_idle(page)


DOCS = Path(__file__).resolve().parents[2] / "docs"


def restart_kernel(page: Page) -> None:
    page.evaluate("() => { void window.jupyterapp.commands.execute('kernelmenu:restart'); }")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    wait_idle(page)


def test_panel_failure_view_narrow_notebook_and_restart(page: Page, lab) -> None:
    """The panel shows why a job failed (opened by default), keeps its columns and buttons in
    a narrow notebook, and a restarted kernel leaves static HTML, never a missing widget."""
    name = make_notebook(lab, "panel.ipynb", [
        "%load_ext clusterjupyter",
        "%%cluster local --async --name bad-input\nimport sys\n"
        "print('reading rows', file=sys.stderr)\n"
        "rows = {'a': 1}\nrows['missing-key-with-a-long-name-to-show-how-reasons-are-cut']",
        "%%cluster local --async --name still-running\nimport time\ntime.sleep(600)",
        "%cluster panel",
    ])
    open_notebook(page, lab, name)
    for _ in range(3):
        run_next_cell(page)
    panel = page.locator(".cj-panel").first
    failed = panel.locator(".cj-job-row").filter(has_text="bad-input")
    failed.locator(".cj-failed").wait_for(timeout=60_000)
    running = panel.locator(".cj-job-row").filter(has_text="still-running")
    running.locator(".cj-running").wait_for(timeout=60_000)
    # the reason is cut to its column, the whole of it on hover
    reason = failed.locator("[title*='the cell raised KeyError']").first
    assert "missing-key-with-a-long-name" in reason.get_attribute("title")
    failed.locator(".cj-row-logs").click()
    error = panel.locator("details.cj-error[open]")
    error.wait_for(timeout=30_000)
    text = error.inner_text()
    assert "KeyError" in text and "Traceback" in text and "reading rows" in text
    # the sidebar's panel is the wide case; a notebook split in half is the narrow one
    DOCS.mkdir(exist_ok=True)
    panel.screenshot(path=str(DOCS / "panel-failed.png"))
    page.set_viewport_size({"width": 900, "height": 900})
    page.wait_for_timeout(500)
    for row in (failed, running):
        box = row.bounding_box()
        for button in row.locator("button").all():
            b = button.bounding_box()
            assert b["x"] + b["width"] <= box["x"] + box["width"] + 1, "a button is cut off"
            assert button.evaluate("b => b.scrollWidth <= b.clientWidth + 1"), \
                f"{button.inner_text()!r} does not fit its button"
    # the column headers shown are whole (narrow: fewer columns, never "na…"); the counts
    # stay inside the panel
    heads = panel.locator(".cj-jobs-grid").first.locator("div")
    shown = [h for h in heads.all() if h.is_visible()]
    assert {h.inner_text() for h in shown} >= {"name", "state", "elapsed"}
    for h in shown:
        assert h.evaluate("d => d.scrollWidth <= d.clientWidth + 1"), \
            f"header {h.inner_text()!r} is cut"
    pbox = panel.bounding_box()
    counts = panel.get_by_text(re.compile(r"1 running")).first
    cbox = counts.bounding_box()
    assert cbox["x"] + cbox["width"] <= pbox["x"] + pbox["width"] + 1, "the counts overflow"
    panel.screenshot(path=str(DOCS / "panel-narrow.png"))
    page.set_viewport_size({"width": 1400, "height": 900})
    page.wait_for_timeout(500)
    assert sum(h.is_visible() for h in heads.all()) == 6  # wide again: every column

    restart_kernel(page)
    page.wait_for_timeout(2000)
    # the status lines of jobs that ended are plain HTML: nothing broken after a restart
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    static = cells.nth(1).locator(".cj-static")
    assert "KeyError" in static.inner_text()
    assert static.locator(".jupyter-widgets").count() == 0
    assert "model not found" not in cells.nth(1).inner_text()


def _lab_api(lab, method: str, path: str) -> object:
    import json
    import urllib.request

    req = urllib.request.Request(f"{lab.url}{path}?token={lab.token}", method=method,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def _no_broken_widget(cell) -> None:
    """No widget view, greyed or live, and no "model not found" in ``cell``'s outputs."""
    outputs = cell.locator(".jp-OutputArea")
    assert outputs.locator(".jupyter-widgets").count() == 0
    assert outputs.locator(".jupyter-widgets-disconnected").count() == 0
    assert "Error displaying widget" not in outputs.inner_text()


def test_widgets_of_a_lost_kernel_become_static_html(page: Page, lab) -> None:
    """A running job's status line and a panel degrade to their static HTML when the kernel
    restarts (no broken-link icons), and a notebook reopened after its kernel went away shows
    that HTML too (no "model not found")."""
    name = make_notebook(lab, "restart.ipynb", [
        "%load_ext clusterjupyter",
        "%%cluster local --async --name survives-restart\nimport time\ntime.sleep(600)",
        "%cluster panel",
    ])
    open_notebook(page, lab, name)
    run_next_cell(page)
    run_next_cell(page)
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    status, panel = cells.nth(1), cells.nth(2)
    status.locator(".cj-job-status .cj-badge.cj-running").wait_for(timeout=60_000)
    panel.locator(".cj-panel .cj-running").first.wait_for(timeout=60_000)
    assert status.locator(".cj-static").count() == 0  # live widgets until now
    job_id = api.list_jobs(limit=1)[0].id

    # 1. the kernel restarts under the page: static HTML at once, the job still known
    restart_kernel(page)
    expect(status.locator(".cj-static")).to_contain_text("survives-restart")
    expect(status.locator(".cj-static")).to_contain_text(f"%cluster status {job_id[:8]}")
    expect(status.locator(".cj-static .cj-running")).to_have_count(1)
    expect(panel.locator(".cj-panel-static")).to_contain_text("%cluster panel")
    page.wait_for_timeout(1000)
    for cell in (status, panel):
        _no_broken_widget(cell)

    # 2. live widgets saved, then the kernel restarted behind the page's back: reopened, the
    #    notebook shows the static HTML where the widget cannot be found
    run_cell = "() => window.jupyterapp.commands.execute('notebook:run-cell')"
    for cell in (cells.nth(0), panel):  # the extension, then a new panel
        cell.locator(".jp-InputArea-editor").click()
        page.evaluate(run_cell)
        wait_idle(page)
    panel.locator(".cj-panel .cj-running").first.wait_for(timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    expect(page.locator(".jp-Notebook")).not_to_have_class(re.compile("jp-mod-dirty"))
    page.wait_for_timeout(1000)
    saved = (lab.root / name).read_text()
    assert saved.count("application/vnd.jupyter.widget-view+json") == 1  # the new panel
    page.goto("about:blank")
    session = next(s for s in _lab_api(lab, "GET", "api/sessions") if s["path"] == name)
    _lab_api(lab, "POST", f"api/kernels/{session['kernel']['id']}/restart")
    open_lab(page, lab, f"lab/workspaces/restart-nb/tree/{name}")
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    expect(cells.nth(2).locator(".cj-panel-static")).to_be_visible(timeout=60_000)
    expect(cells.nth(1).locator(".cj-static")).to_contain_text("survives-restart")
    page.wait_for_timeout(1000)
    for i in (1, 2):
        _no_broken_widget(cells.nth(i))
    assert api.get_job(job_id).state is JobState.RUNNING  # the job itself ran on
    api.cancel_job(job_id)
