"""Helpers for tests that drive a real IPython shell (importable as ``shells`` from tests/)."""

from __future__ import annotations


def new_shell():
    """A new real InteractiveShell (as after a kernel restart) with the extension loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "clusterjupyter")
    return shell


def run(shell, source: str):
    """Run a cell; return the ExecutionResult (raises nothing)."""
    return shell.run_cell(source, store_history=True)


def ok(shell, source: str):
    """Run a cell that must succeed; return its result value."""
    r = run(shell, source)
    if not r.success:
        raise AssertionError(f"cell failed: {r.error_before_exec or r.error_in_exec!r}")
    return r.result
