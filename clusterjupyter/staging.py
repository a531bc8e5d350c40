"""A job's surroundings, kernel side: its working directory, the files and local modules that
travel with it, and the files that come back.

Each job runs in one of two modes, decided by :func:`placement` from the profile:

* **shared** — the job's host sees the kernel's files: profiles without a ``host`` (the built-in
  local one, a scheduler on this machine such as Jupyter on a login node) unless ``shared_fs =
  false`` or the scheduler is Kubernetes; any profile with ``shared_fs = true``; and any profile
  whose ``path_map`` maps the kernel's working directory to its path on the cluster. The job
  runs in the kernel's working directory (mapped); nothing is copied.
* **staged** — otherwise (an SSH host, a Kubernetes pod). The files and directories the cell
  refers to (:func:`candidates`: string literals in the cell and in the notebook functions it
  uses, ``!cmd`` and magic arguments word by word, ``pathlib`` values among its inputs, the
  ``--stage`` option and the profile's ``stage`` list), when they exist here, travel as
  content-addressed blobs through the job root's blob store (an unchanged file is not sent
  again) and are laid out in the job's working directory at the same relative paths. The files
  the cell creates or changes there come back into the kernel's working directory afterwards
  (:func:`receive_files`): authenticated, confined to that directory, never over a local file
  that changed since submission (both are kept), listed in one notice.

Local modules (:func:`is_local`) travel too: a module the cell uses whose file is neither in the
standard library nor in an installed ``site-packages`` (a ``helpers.py`` beside the notebook, a
package in a project directory on ``sys.path``, an editable install's source tree). In staged
mode their files are sent (content-addressed, like staged data) and put first on the job's
``sys.path``, so the job imports the kernel's version; in shared mode their directories are.

The work is split by job: :mod:`.stagefind` (where the job runs, the files the cell refers to,
sizes), :mod:`.stagemodules` (local modules), :mod:`.stageplan` (the plan: file blobs, limits,
the manifest entry) and :mod:`.stagereturn` (the files that come back). This module gathers
their public names. The job-side half is :mod:`clusterjupyter._workdir`.
"""

from __future__ import annotations

from .stagefind import (DEFAULT_RETURN_LIMIT, DEFAULT_STAGE_LIMIT, DEFAULT_STAGE_MAX_FILES,
                        StagingError, candidates, format_size, is_within, map_path, parse_size,
                        placement, posixpath_join)
from .stagemodules import LocalModule, is_local, loaded_local_modules, local_module, modules_used
from .stageplan import FileBlob, Limits, LocalFile, Plan, file_sha256, make_plan, record_path
from .stagereturn import Returned, fetch_left, receive_files

__all__ = [
    "DEFAULT_RETURN_LIMIT", "DEFAULT_STAGE_LIMIT", "DEFAULT_STAGE_MAX_FILES", "FileBlob",
    "Limits", "LocalFile", "LocalModule", "Plan", "Returned", "StagingError", "candidates",
    "fetch_left", "file_sha256", "format_size", "is_local", "is_within", "loaded_local_modules",
    "local_module", "make_plan", "map_path", "modules_used", "parse_size", "placement",
    "posixpath_join", "receive_files", "record_path",
]
