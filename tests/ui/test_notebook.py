"""``%%cluster`` cells in a real JupyterLab notebook (headless Chromium): kernel status, the
status line, failures, the panel, and what a restarted kernel shows."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from test_sidebar import make_notebook, open_lab, run_next_cell

pytestmark = pytest.mark.browser

KERNEL_STATUS = ("() => window.jupyterapp.shell.currentWidget?.sessionContext?.session"
                 "?.kernel?.status")


def wait_idle(page: Page) -> None:
    page.wait_for_function(f"() => ({KERNEL_STATUS})() === 'idle'", timeout=60_000)


def test_first_cluster_cell_keeps_the_kernel_busy(page: Page, lab) -> None:
    name = make_notebook(lab, "busy.ipynb", [
        "%load_ext clusterjupyter",
        "%%cluster local --name first-blocking\nimport time\nfor i in range(12):\n"
        "    print('tick', i, flush=True); time.sleep(0.5)",
    ])
    open_lab(page, lab, f"lab/tree/{name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_idle(page)
    run_next_cell(page)
    expect(page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt")).to_have_text(
        "[1]:", timeout=60_000)
    run_next_cell(page)
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    cell.locator(".cj-badge.cj-running").wait_for(timeout=60_000)
    seen = []
    deadline = time.time() + 3
    while time.time() < deadline:
        seen.append(page.evaluate(KERNEL_STATUS))
        time.sleep(0.1)
    assert set(seen) == {"busy"}, seen
    expect(cell.locator(".cj-static")).to_be_visible(timeout=60_000)
    wait_idle(page)
