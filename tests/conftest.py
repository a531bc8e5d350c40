"""Shared fixtures: an isolated clusterjupyter home and a real IPython shell with the extension."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from shells import new_shell  # noqa: E402  (tests/ must be on sys.path first)


@pytest.fixture
def cj_home(tmp_path, monkeypatch):
    """A fresh CLUSTERJUPYTER_HOME (config, secret, journal, local work root) for one test."""
    home = tmp_path / "cjhome"
    monkeypatch.setenv("CLUSTERJUPYTER_HOME", str(home))
    return home


@pytest.fixture
def shell(cj_home):
    sh = new_shell()
    yield sh
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
