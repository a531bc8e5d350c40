"""Conda packages as pip requirements, where they can be.

A kernel running in a conda environment has two kinds of packages: Python distributions that
conda installed (their ``INSTALLER`` file says ``conda``; their metadata carries the project's
own name and version) and conda packages of their own (``conda-meta/*.json``: the conda name,
which may differ from the project's, and the files the package installed — a Python package's
among them its ``*.dist-info`` directory; a library such as ``openssl`` has none).

The decisions are pure functions of that metadata: :func:`pip_requirement` (a distribution's
name and version) and :func:`record_requirement` (a ``conda-meta`` record). What cannot be a
pip requirement is named with the reason, for the sync's plan and log.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

from packaging.version import InvalidVersion, Version

#: conda's own machinery: no job needs it, and pip cannot install it
CONDA_TOOLING = frozenset({
    "conda", "conda-build", "conda-libmamba-solver", "libmambapy", "mamba", "conda-index",
    "conda-env", "conda-content-trust", "conda-package-streaming", "conda-package-handling",
    "menuinst", "anaconda-navigator", "navigator-updater", "anaconda-anon-usage",
})
#: ``…/site-packages/NAME-VERSION.dist-info/…`` (or ``.egg-info``) in a record's file list
_DIST_DIR = re.compile(r"(?:^|/)(?:site|dist)-packages/([^/]+?)-([^/-]+)(?:-py\d+(?:\.\d+)?)?"
                       r"\.(?:dist|egg)-info(?:/|$)")


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_requirement(name: str, version: str) -> tuple[str | None, str]:
    """``("name==version", "")`` for a conda-installed distribution pip can install, else
    ``(None, why)``."""
    norm = normalize(name)
    if norm in CONDA_TOOLING:
        return None, "conda's own tooling"
    try:
        parsed = Version(version)
    except InvalidVersion:
        return None, f"version {version!r} is not a pip version"
    if parsed.local:
        return None, f"local build {version} (not on a package index)"
    return f"{norm}=={version}", ""


def record_requirement(record: dict[str, Any]) -> tuple[str | None, str]:
    """The pip requirement of one ``conda-meta`` record (by the Python distribution among its
    files, whatever the conda name), or ``(None, why)``."""
    for path in record.get("files") or ():
        m = _DIST_DIR.search(str(path))
        if m:
            return pip_requirement(m.group(1), m.group(2))
    return None, "a conda package without Python metadata (a library, not a pip requirement)"


def is_conda_installed(installer: str | None) -> bool:
    """Did conda install the distribution whose ``INSTALLER`` file reads ``installer``?"""
    return (installer or "").strip().lower() in ("conda", "mamba", "micromamba")


def records(prefix: str) -> list[dict[str, Any]]:
    """The ``conda-meta`` records of the environment at ``prefix`` ([] outside conda)."""
    meta = os.path.join(prefix, "conda-meta")
    try:
        names = sorted(n for n in os.listdir(meta) if n.endswith(".json"))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            with open(os.path.join(meta, name)) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("name"):
            out.append(doc)
    return out


def by_conda_name(recs: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The record whose conda package name is ``name`` (normalized), if any."""
    want = normalize(name)
    return next((r for r in recs if normalize(str(r["name"])) == want), None)


def without_python(recs: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(name version, why)`` of the records that are no pip requirement (libraries, conda's
    tooling), for a sync of the whole environment to name them."""
    out = []
    for r in recs:
        req, why = record_requirement(r)
        if req is None and str(r["name"]) != "python":
            out.append((f"{r['name']} {r.get('version', '')}".strip(), why))
    return out
