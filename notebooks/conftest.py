"""nbval setup: each notebook's kernel gets a fresh ``CLUSTERJUPYTER_HOME`` and its test clusters.

nbval starts a notebook's kernel when the notebook's first cell is set up, with this process's
environment. Just before that, :func:`nbenv.prepare` starts the test clusters the notebook needs
(failing the cell, never skipping, if they cannot start) and writes the ``slurm``/``ssh``
profiles into a temporary home; the variable is set for the kernel's start and restored after the
notebook's last cell (the home is then removed), so tests outside notebooks/ never see it.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
from nbformat import NotebookNode
from nbval.plugin import IPyNbCell

sys.path.insert(0, os.path.dirname(__file__))

import nbenv  # noqa: E402

_saved: dict[str, str | None] = {}
SANITIZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbval_sanitize.cfg")


def pytest_configure(config: pytest.Config) -> None:
    """Defaults for ``--nbval``: these notebooks are compared through nbval_sanitize.cfg and run
    in this Python (so ``pytest --nbval notebooks/`` alone works; explicit options win)."""
    opt = config.option
    if getattr(opt, "nbval_sanitize_with", "unset") is None:
        opt.nbval_sanitize_with = SANITIZE
    if hasattr(opt, "nbval_current_env") and not getattr(opt, "nbval_kernel_name", None):
        opt.nbval_current_env = True


#: a job's status line (``job 1a2b3c4d cell-3 [local #42] completed 0s on vm``)
_STATUS_LINE = re.compile(r"job [0-9a-f]{8} ")
_compare_outputs = IPyNbCell.compare_outputs


def _compare_without_final_status_html(self, test, ref, skip_compare=None):  # type: ignore[no-untyped-def]
    """The status line's last version (static HTML, once the job has ended) reaches the notebook
    as a display update, which nbval does not apply: a fresh run has only the first version
    (widget view and text). Its ``text/html`` is left out of the comparison; its ``text/plain``,
    which says the same (state, reason), is still compared."""
    def strip(out):  # type: ignore[no-untyped-def]
        data = out.get("data", {}) if out.get("output_type") == "display_data" else {}
        if "text/html" in data and _STATUS_LINE.match(str(data.get("text/plain", ""))):
            out = NotebookNode({**out, "data": NotebookNode(
                {k: v for k, v in data.items() if k != "text/html"})})
        return out

    return _compare_outputs(self, [strip(o) for o in test], [strip(o) for o in ref], skip_compare)


IPyNbCell.compare_outputs = _compare_without_final_status_html


def _notebook(item: pytest.Item) -> str | None:
    parent = item.parent
    path = getattr(parent, "path", None)
    if path is None or path.suffix != ".ipynb" or not hasattr(parent, "nb"):
        return None
    return path.name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = _notebook(item)
        for marker in nbenv.MARKERS.get(name or "", ()):
            item.add_marker(getattr(pytest.mark, marker))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    name = _notebook(item)
    if name is None:
        return
    env = getattr(item.parent, "_cj_env", None)
    if isinstance(env, Exception):
        raise env
    if env is not None:
        return
    try:
        env = nbenv.prepare(name)       # RuntimeError (failed tests) if a cluster is down
    except Exception as e:
        item.parent._cj_env = e
        raise
    item.parent._cj_env = env
    for key, value in {**env, "JPY_SESSION_NAME": None}.items():
        _saved.setdefault(key, os.environ.get(key))
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After a notebook's last cell (and its kernel's shutdown): restore the environment and
    remove the notebook's temporary home."""
    if _notebook(item) is None or (nextitem is not None and nextitem.parent is item.parent):
        return
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved.clear()
    env = getattr(item.parent, "_cj_env", None)
    if isinstance(env, dict):
        nbenv.cleanup(env)
