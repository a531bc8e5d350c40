"""Shared fixtures: an isolated clusterjupyter home and a real IPython shell with the extension."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def cj_home(tmp_path, monkeypatch):
    """A fresh CLUSTERJUPYTER_HOME (config, secret, journal, local work root) for one test."""
    home = tmp_path / "cjhome"
    monkeypatch.setenv("CLUSTERJUPYTER_HOME", str(home))
    return home


def new_shell():
    """A new real InteractiveShell (as after a kernel restart) with the extension loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "clusterjupyter")
    return shell


@pytest.fixture
def shell(cj_home):
    sh = new_shell()
    yield sh
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()


def run(shell, source: str):
    """Run a cell; return the ExecutionResult (raises nothing)."""
    return shell.run_cell(source, store_history=True)


def ok(shell, source: str):
    """Run a cell that must succeed; return its result value."""
    r = run(shell, source)
    if not r.success:
        raise AssertionError(f"cell failed: {r.error_before_exec or r.error_in_exec!r}")
    return r.result
