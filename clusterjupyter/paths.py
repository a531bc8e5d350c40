"""Where clusterjupyter keeps its own files on the user's machine.

``CLUSTERJUPYTER_HOME`` puts everything under one directory (tests, sandboxes); otherwise the
platform's user config and data directories are used (platformdirs).
"""

from __future__ import annotations

import os

import platformdirs

HOME_ENV = "CLUSTERJUPYTER_HOME"


def config_dir() -> str:
    home = os.environ.get(HOME_ENV)
    return os.path.join(home, "config") if home else platformdirs.user_config_dir("clusterjupyter")


def data_dir() -> str:
    home = os.environ.get(HOME_ENV)
    return os.path.join(home, "data") if home else platformdirs.user_data_dir("clusterjupyter")


def secret_path() -> str:
    """The per-user HMAC secret (0600), outside every job directory."""
    return os.path.join(config_dir(), "secret")


def profiles_path() -> str:
    return os.path.join(config_dir(), "profiles.toml")


def journal_path() -> str:
    return os.path.join(data_dir(), "journal.sqlite")


def local_work_root() -> str:
    """Work root of the built-in local profile (blobs/ and jobs/ live under it)."""
    return os.path.join(data_dir(), "work")
