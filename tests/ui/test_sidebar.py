"""The "Cluster jobs" sidebar in a real JupyterLab and a real browser (headless Chromium).

Run with ``pytest -m browser tests/ui``. Needs the built sidebar (``jlpm build`` in
labextension/), ``/usr/bin/chromium`` and ``pip install playwright`` (never
``playwright install``: the system Chromium is used).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import re
import uuid

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from clusterjupyter import api, paths
from clusterjupyter.jobdir import JobPaths
from clusterjupyter.journal import JobRecord
from clusterjupyter.states import JobState

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

SIDEBAR_TAB = '.jp-SideBar [data-id="clusterjupyter-jobs"]'
PANEL = "#clusterjupyter-jobs"


def open_lab(page: Page, lab, path: str = "lab") -> None:
    page.goto(lab.page_url(path))
    page.wait_for_selector("#jp-main-dock-panel", state="attached", timeout=60_000)
    # the application has started once the sidebar tab is there
    page.wait_for_selector(SIDEBAR_TAB, timeout=60_000)


def open_sidebar(page: Page) -> None:
    panel = page.locator(PANEL)
    if not panel.is_visible():
        page.click(SIDEBAR_TAB)
    expect(panel).to_be_visible()


def row(page: Page, job_id: str):
    return page.locator(f'{PANEL} [data-testid="cj-job"][data-job-id="{job_id}"]')


def add_job(state: JobState, name: str, **extra) -> JobRecord:
    job_id = uuid.uuid4().hex
    now = time.time()
    rec = JobRecord(id=job_id, name=name, profile="local", scheduler="local", state=state,
                    submitted=now, cell="print('hello')", started=now,
                    job_dir=JobPaths(paths.local_work_root(), job_id).dir, **extra)
    api.journal().add(rec)
    return rec


def test_sidebar_follows_the_journal(page: Page, lab) -> None:
    """Jobs written to the journal appear, change state, filter and show their logs."""
    rec = add_job(JobState.RUNNING, "journal-job")
    os.makedirs(rec.job_dir, mode=0o700)
    with open(JobPaths(paths.local_work_root(), rec.id).stdout, "w") as f:
        f.write("epoch 1\nepoch 2\n")

    open_lab(page, lab)
    open_sidebar(page)

    job = row(page, rec.id)
    expect(job.get_by_test_id("cj-job-state")).to_have_text("running")
    expect(job.get_by_test_id("cj-job-name")).to_have_text("journal-job")
    expect(job.get_by_test_id("cj-job-cancel")).to_be_visible()

    # logs of the selected job, refreshed while it runs
    job.click()
    logs = page.get_by_test_id("cj-log-text")
    expect(logs).to_have_text("epoch 1\nepoch 2\n")
    with open(JobPaths(paths.local_work_root(), rec.id).stdout, "a") as f:
        f.write("epoch 3\n")
    expect(logs).to_contain_text("epoch 3")
    page.get_by_test_id("cj-log-tab-stderr").click()
    expect(logs).to_contain_text("(stderr is empty so far)")  # the panel's words too
    page.get_by_test_id("cj-log-tab-stdout").click()

    # the journal changes, the sidebar follows (polling every 2 s)
    api.journal().update(rec.id, state=JobState.COMPLETED, finished=time.time(), exit_code=0)
    expect(job.get_by_test_id("cj-job-state")).to_have_text("completed")
    expect(job).to_have_attribute("data-state", "completed")
    expect(job.get_by_test_id("cj-job-cancel")).to_be_hidden()

    failed = add_job(JobState.FAILED, "broken-job", reason="ZeroDivisionError: division by zero",
                     exit_code=1, finished=time.time())
    expect(row(page, failed.id).get_by_test_id("cj-job-reason")).to_have_text(
        "ZeroDivisionError: division by zero (exit code 1)")

    # the state filter asks the server for matching jobs only
    page.get_by_test_id("cj-state-filter").select_option("active")
    expect(page.locator(f'{PANEL} [data-testid="cj-job"]')).to_have_count(0)
    expect(page.get_by_test_id("cj-empty")).to_have_text("No pending or running jobs.")
    page.get_by_test_id("cj-state-filter").select_option("failed")
    expect(page.locator(f'{PANEL} [data-testid="cj-job"]')).to_have_count(1)
    expect(row(page, failed.id)).to_be_visible()
    page.get_by_test_id("cj-state-filter").select_option("")
    expect(row(page, rec.id)).to_be_visible()


def test_cancel_button_cancels_the_job(page: Page, lab) -> None:
    """Cancel in the sidebar goes through the server to the local scheduler."""
    rec = add_job(JobState.RUNNING, "sleeper-job")
    os.makedirs(rec.job_dir, mode=0o700)
    # a stand-in for the job's process: the local scheduler knows its jobs by the id in argv
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", rec.id],
                            start_new_session=True)
    try:
        api.journal().update(rec.id, native_id=str(proc.pid))
        open_lab(page, lab)
        open_sidebar(page)
        job = row(page, rec.id)
        expect(job.get_by_test_id("cj-job-state")).to_have_text("running")

        job.get_by_test_id("cj-job-cancel").click()
        page.locator(".jp-Dialog .jp-mod-accept").click()

        expect(job.get_by_test_id("cj-job-state")).to_have_text("cancelled", timeout=40_000)
        assert proc.wait(timeout=20) != 0
        assert api.get_job(rec.id).state is JobState.CANCELLED
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_notebook(lab, name: str, cells: list[str]) -> str:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}",
                   "metadata": {}, "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (lab.root / name).write_text(json.dumps(nb))
    return name


def close_all(page: Page) -> None:
    """Close every document (their kernels keep running), answering "discard" to any prompt."""
    page.evaluate("() => { void window.jupyterapp.commands.execute('application:close-all'); }")
    deadline = time.time() + 30
    while page.locator(".jp-Notebook").count() and time.time() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            discard = dialog.get_by_role("button", name=re.compile("Discard|Don.t save", re.I))
            (discard.first if discard.count() else dialog.locator(".jp-mod-accept").first).click()
        page.wait_for_timeout(200)
    expect(page.locator(".jp-Notebook")).to_have_count(0)


def run_next_cell(page: Page) -> None:
    """Run the active cell of the current notebook and select the next (without waiting)."""
    page.evaluate("() => { void window.jupyterapp.commands.execute("
                  "'notebook:run-cell-and-select-next'); }")


def test_cluster_magic_jobs_in_the_sidebar(page: Page, lab) -> None:
    """The whole path: %%cluster in a notebook, the job in the sidebar, cancel from there."""
    name = make_notebook(lab, "sidebar.ipynb", [
        "%load_ext clusterjupyter",
        "%%cluster local --async --name quick-job\n"
        "import time\ntime.sleep(2)\nprint('hello from the job')\nx = 1",
        "%%cluster local --async --name long-job\nimport time\ntime.sleep(600)\ny = 2",
    ])
    open_lab(page, lab, f"lab/tree/{name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status"
        " === 'idle'", timeout=60_000)
    run_next_cell(page)
    expect(page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt")).to_have_text(
        "[1]:", timeout=60_000)
    run_next_cell(page)

    open_sidebar(page)
    quick = page.locator(f'{PANEL} [data-testid="cj-job"]').filter(
        has=page.get_by_test_id("cj-job-name").get_by_text("quick-job", exact=True))
    expect(quick).to_have_count(1, timeout=30_000)
    expect(quick.get_by_test_id("cj-job-state")).to_have_text("completed", timeout=60_000)
    quick.click()
    expect(page.get_by_test_id("cj-log-title")).to_contain_text("quick-job")
    expect(page.get_by_test_id("cj-log-text")).to_have_text("hello from the job\n")
    # the click also took the notebook to the job's cell
    expect(page.locator(".jp-Notebook .jp-Cell.jp-mod-active")).to_contain_text("quick-job")

    page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-InputPrompt").click()
    run_next_cell(page)
    long = page.locator(f'{PANEL} [data-testid="cj-job"]').filter(
        has=page.get_by_test_id("cj-job-name").get_by_text("long-job", exact=True))
    expect(long.get_by_test_id("cj-job-state")).to_have_text("running", timeout=60_000)
    expect(long.get_by_test_id("cj-job-elapsed")).to_contain_text("running")
    long_id = long.get_attribute("data-job-id")
    assert long_id

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "sidebar-running.png"))

    long.get_by_test_id("cj-job-cancel").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    expect(long.get_by_test_id("cj-job-state")).to_have_text("cancelled", timeout=60_000)
    assert api.get_job(long_id).state is JobState.CANCELLED
    assert api.get_job(quick.get_attribute("data-job-id")).state is JobState.COMPLETED

    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "sidebar.png"))
    page.screenshot(path=str(ARTIFACTS / "lab.png"))


def test_sidebar_failure_grouping_navigation_rename_queue_and_clear(page: Page, lab) -> None:
    """A failed job's error view, rows by notebook with id, host and submit time, elapsed
    ticking, a click that opens the notebook at the job's cell, a rename followed, the queue
    view's filter/sort/multi-select cancel, and "clear finished"."""
    import socket

    other = add_job(JobState.COMPLETED, "elsewhere-job", finished=time.time())
    name = make_notebook(lab, "analysis.ipynb", [
        "%load_ext clusterjupyter",
        "%%cluster local --async --name will-fail\nimport sys\n"
        "print('loading table', file=sys.stderr)\nrows = {}\nrows['no-such-row']",
        "%%cluster local --async --name slow-fit\nimport time\ntime.sleep(600)",
    ])
    open_lab(page, lab)
    close_all(page)
    page.evaluate(f"() => window.jupyterapp.commands.execute('docmanager:open', "
                  f"{{path: '{name}'}})")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status"
        " === 'idle'", timeout=60_000)
    run_next_cell(page)
    expect(page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt")).to_have_text(
        "[1]:", timeout=60_000)
    run_next_cell(page)
    run_next_cell(page)
    open_sidebar(page)

    group = page.locator(f'{PANEL} [data-testid="cj-group"][data-notebook="analysis.ipynb"]')
    fail = group.locator('[data-testid="cj-job"]').filter(has_text="will-fail")
    slow = group.locator('[data-testid="cj-job"]').filter(has_text="slow-fit")
    expect(fail.get_by_test_id("cj-job-state")).to_have_text("failed", timeout=60_000)
    expect(slow.get_by_test_id("cj-job-state")).to_have_text("running", timeout=60_000)
    fail_id = fail.get_attribute("data-job-id")
    assert fail_id
    expect(fail.get_by_test_id("cj-job-id")).to_have_text(fail_id[:8])
    expect(fail.get_by_test_id("cj-job-host")).to_have_text(f"on {socket.gethostname()}")
    expect(fail.get_by_test_id("cj-job-submitted")).to_have_text(re.compile(r"\d"))
    expect(fail.get_by_test_id("cj-job-reason")).to_contain_text(
        "the cell raised KeyError: 'no-such-row'")
    # jobs not from a notebook of this server are grouped apart
    expect(page.locator(f'{PANEL} [data-testid="cj-group"][data-notebook=""]')
           .locator(f'[data-job-id="{other.id}"]')).to_be_visible()

    # elapsed time ticks every second, not every poll
    elapsed = slow.get_by_test_id("cj-job-elapsed")
    first = elapsed.inner_text()
    expect(elapsed).not_to_have_text(first, timeout=3000)

    # a failed job opens on why it failed
    fail.click()
    expect(page.get_by_test_id("cj-log-tab-error")).to_have_attribute("aria-selected", "true")
    view = page.get_by_test_id("cj-error-view")
    expect(view.get_by_test_id("cj-error-head")).to_contain_text("KeyError: 'no-such-row'")
    expect(view.get_by_test_id("cj-error-traceback")).to_contain_text("Traceback")
    expect(view.get_by_test_id("cj-error-logs")).to_contain_text("loading table")
    ARTIFACTS.mkdir(exist_ok=True)
    docs = Path(__file__).resolve().parents[2] / "docs"
    page.locator(PANEL).screenshot(path=str(docs / "sidebar-failed.png"))

    # a click opens the notebook (closed here) at the job's cell
    close_all(page)
    slow.click()
    expect(page.locator(".jp-Notebook .jp-Cell.jp-mod-active")).to_contain_text(
        "--name slow-fit", timeout=30_000)

    # the notebook is renamed while its kernel runs: its jobs follow
    page.evaluate("() => window.jupyterapp.serviceManager.contents.rename("
                  "'analysis.ipynb', 'renamed.ipynb')")
    renamed = page.locator(f'{PANEL} [data-testid="cj-group"][data-notebook="renamed.ipynb"]')
    expect(renamed.locator('[data-testid="cj-job"]')).to_have_count(2, timeout=30_000)
    assert api.get_job(fail_id).notebook.endswith("renamed.ipynb")

    # the queue view: filter, sort, select, cancel
    page.get_by_test_id("cj-open-queue").click()
    queue = page.locator(".cj-QueueView")
    expect(queue).to_be_visible()
    rows = queue.get_by_test_id("cj-queue-row")
    expect(rows.filter(has_text="slow-fit")).to_have_count(1, timeout=30_000)
    queue.get_by_test_id("cj-queue-filter").fill("slow-fit")
    expect(rows).to_have_count(1)
    queue.get_by_test_id("cj-queue-sort-name").click()
    expect(queue.get_by_test_id("cj-queue-sort-name")).to_have_attribute("aria-sort",
                                                                          "ascending")
    expect(queue.get_by_test_id("cj-queue-cancel")).to_be_disabled()
    rows.first.get_by_test_id("cj-queue-check").check()
    page.screenshot(path=str(docs / "queue-view.png"))
    queue.get_by_test_id("cj-queue-cancel").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    expect(renamed.locator('[data-testid="cj-job"]').filter(has_text="slow-fit")
           .get_by_test_id("cj-job-state")).to_have_text("cancelled", timeout=60_000)
    expect(rows).to_have_count(0, timeout=30_000)

    # "clear finished" hides the jobs that ended (the journal keeps them)
    page.get_by_test_id("cj-clear-finished").click()
    expect(page.locator(f'{PANEL} [data-testid="cj-job"]')).to_have_count(0)
    assert api.get_job(fail_id).state is JobState.FAILED


def test_sweep_is_one_expandable_row(page: Page, lab) -> None:
    """A sweep's elements (one journal record grouping their jobs) are one row with its state
    and counts, unfolding into one row per element with its own state and logs."""
    sweep_id = uuid.uuid4().hex[:24]
    j = api.journal()
    j.add_sweep({"id": sweep_id, "name": "grid", "profile": "local", "created": time.time(),
                 "size": 3, "axes": ["alpha"], "outputs": ["score"], "params": b"",
                 "params_mac": ""})
    now = time.time()

    def element(i: int, state: JobState, **extra) -> JobRecord:
        job_id = uuid.uuid4().hex
        return JobRecord(id=job_id, name=f"grid[{i}]", profile="local", scheduler="local",
                         state=state, submitted=now, cell="score = alpha", started=now,
                         job_dir=JobPaths(paths.local_work_root(), job_id).dir, **extra)

    lost = element(1, JobState.LOST, finished=now)
    recs = [element(0, JobState.COMPLETED, finished=now, exit_code=0),
            element(1, JobState.FAILED, finished=now, exit_code=1,
                    reason="ValueError: alpha too large"),
            element(2, JobState.RUNNING)]
    j.add_jobs([recs[0], lost, recs[2]], sweep_id, 0, [0, 1, 2])
    j.add_jobs([recs[1]], sweep_id, 1, [1])  # a retry replaced element 1's lost attempt
    os.makedirs(recs[0].job_dir, mode=0o700)
    with open(JobPaths(paths.local_work_root(), recs[0].id).stdout, "w") as f:
        f.write("alpha=0.1 score=0.93\n")

    open_lab(page, lab, "lab/workspaces/sweep")  # a workspace of its own: sidebar closed
    open_sidebar(page)
    sweep = page.locator(f'{PANEL} [data-testid="cj-sweep"][data-sweep-id="{sweep_id}"]')
    expect(sweep.get_by_test_id("cj-sweep-name")).to_have_text("grid")
    expect(sweep.get_by_test_id("cj-sweep-state")).to_have_text("sweep running")
    counts = sweep.get_by_test_id("cj-sweep-counts")
    expect(counts).to_contain_text("3 elements")
    for word in ("1 done", "1 failed", "1 running"):
        expect(counts).to_contain_text(word)
    # one row for the sweep, its elements folded
    elements = sweep.get_by_test_id("cj-sweep-elements")
    expect(elements).to_be_hidden()
    for rec in recs:
        assert page.locator(f'{PANEL} [data-job-id="{rec.id}"]').count() == 1
    assert page.locator(f'{PANEL} [data-job-id="{lost.id}"]').count() == 0
    sweep.get_by_test_id("cj-sweep-toggle").click()
    expect(elements).to_be_visible()
    rows = elements.get_by_test_id("cj-job")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).get_by_test_id("cj-job-name")).to_have_text("grid[0]")
    expect(rows.nth(1).get_by_test_id("cj-job-state")).to_have_text("failed")
    expect(rows.nth(1).get_by_test_id("cj-job-reason")).to_contain_text("alpha too large")
    expect(rows.nth(2).get_by_test_id("cj-job-state")).to_have_text("running")
    # an element's logs
    rows.nth(0).click()
    expect(page.get_by_test_id("cj-log-text")).to_have_text("alpha=0.1 score=0.93\n")
    docs = Path(__file__).resolve().parents[2] / "docs"
    page.locator(PANEL).screenshot(path=str(docs / "sidebar-sweep.png"))
    # the last element ends: the sweep's state follows
    j.update(recs[2].id, state=JobState.COMPLETED, finished=time.time(), exit_code=0)
    expect(sweep.get_by_test_id("cj-sweep-state")).to_have_text("sweep failed")
    expect(sweep).to_have_attribute("data-state", "failed")
