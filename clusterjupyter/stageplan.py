"""One job's staging plan, decided before submission: where it runs, the files and local modules
that travel with it as content-addressed blobs (:class:`FileBlob`, hashed once per file
version), within the profile's limits; its manifest entry and the record the return of files
needs. Part of :mod:`clusterjupyter.staging`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import paths as local_paths
from ._workdir import SKIP_DIRS
from .jobdir import blob_mac
from .serialize import Blob
from .stagefind import (DEFAULT_RETURN_LIMIT, DEFAULT_STAGE_LIMIT, DEFAULT_STAGE_MAX_FILES,
                        StagingError, candidates, format_size, is_within, map_path,
                        parse_size, placement)
from .stagemodules import LocalModule, local_module, modules_used

#: files up to this size are read into memory to be sent; larger ones are memory-mapped
_READ_MAX = 64 << 20


@dataclass
class LocalFile:
    """One file to send: where it is here and where it goes (relative to the layout base)."""

    local: str
    rel: str
    size: int
    mode: int
    sha256: str = ""


_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str, st: os.stat_result) -> str:
    """sha256 of a file, remembered by (path, inode, size, mtime) so an unchanged file is not
    hashed twice by this kernel."""
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    sha = _HASHES.get(key)
    if sha is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        sha = _HASHES[key] = h.hexdigest()
    return sha


def _file_parts(f: LocalFile) -> list[memoryview]:
    """The bytes of a staged file (read, or memory-mapped when large)."""
    if f.size == 0:
        return []
    with open(f.local, "rb") as fh:
        if f.size <= _READ_MAX:
            data = fh.read()
            if len(data) != f.size:
                raise StagingError(f"{f.local} changed while it was being staged")
            return [memoryview(data)]
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mm) != f.size:
        raise StagingError(f"{f.local} changed while it was being staged")
    return [memoryview(mm)]


class FileBlob(Blob):
    """A staged file as a blob for the transports: its address is known (hashed when the plan
    was made) and its bytes are read only if it is sent (not when the cluster has it)."""

    def __init__(self, f: LocalFile):
        self._file = f
        self._parts: list[memoryview] | None = None
        super().__init__([], f.size, sha256=f.sha256)

    @property  # type: ignore[override]
    def parts(self) -> list[memoryview]:
        if self._parts is None:
            self._parts = _file_parts(self._file)
        return self._parts

    @parts.setter
    def parts(self, value: list[memoryview]) -> None:
        self._parts = value or None



# -- the plan -----------------------------------------------------------------------------------

@dataclass
class Limits:
    size: int = DEFAULT_STAGE_LIMIT
    files: int = DEFAULT_STAGE_MAX_FILES
    return_size: int = DEFAULT_RETURN_LIMIT

    @classmethod
    def of(cls, profile: Any, stage_limit: str | None = None) -> "Limits":
        return cls(
            size=parse_size(stage_limit or profile.stage_limit or DEFAULT_STAGE_LIMIT),
            files=profile.stage_max_files or DEFAULT_STAGE_MAX_FILES,
            return_size=parse_size(profile.return_limit or DEFAULT_RETURN_LIMIT))


@dataclass
class Plan:
    """Where one job runs and what travels with it (decided before submission)."""

    cwd: str                                   # the kernel's working directory
    shared: str | None = None                  # the job's cwd on the cluster (shared mode)
    base: str = ""                             # layout base here (staged mode)
    files: dict[str, LocalFile] = field(default_factory=dict)     # rel to base
    dirs: list[str] = field(default_factory=list)
    modules: dict[str, LocalFile] = field(default_factory=dict)   # rel to the modules dir
    module_names: list[str] = field(default_factory=list)
    module_paths: list[str] = field(default_factory=list)         # shared mode
    rewrite: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    profile: str = ""

    @property
    def staged(self) -> bool:
        return self.shared is None

    @property
    def size(self) -> int:
        return sum(f.size for f in [*self.files.values(), *self.modules.values()])

    def blobs(self) -> dict[str, Blob]:
        """Every file to send, as blobs keyed by a name of their own."""
        out: dict[str, Blob] = {f"file:{rel}": FileBlob(f) for rel, f in self.files.items()}
        out.update({f"module:{rel}": FileBlob(f) for rel, f in self.modules.items()})
        return out

    def manifest(self, key: bytes, job_id: str) -> dict[str, Any]:
        """The manifest's ``workdir`` entry (signed with the manifest)."""
        if not self.staged:
            return {"mode": "shared", "cwd": self.shared, "module_paths": self.module_paths,
                    "rewrite": self.rewrite}

        def entries(files: dict[str, LocalFile]) -> dict[str, Any]:
            return {rel: {"sha256": f.sha256, "size": f.size, "mode": f.mode,
                          "mac": blob_mac(key, job_id, f.sha256)} for rel, f in files.items()}

        cwd_rel = os.path.relpath(self.cwd, self.base).replace(os.sep, "/")
        return {"mode": "staged", "cwd": "" if cwd_rel == "." else cwd_rel,
                "files": entries(self.files), "dirs": self.dirs,
                "modules": entries(self.modules), "rewrite": self.rewrite,
                "return_limit": self.limits.return_size,
                "return_max_files": self.limits.files}

    def remember(self, job_id: str) -> None:
        """Keep what the return of files needs (the kernel's directory and what was sent)."""
        if not self.staged:
            return
        prefix = os.path.relpath(self.cwd, self.base).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        doc = {"cwd": self.cwd, "profile": self.profile,
               "sent": {rel[len(prefix):]: f.sha256 for rel, f in self.files.items()
                        if rel.startswith(prefix)}}
        path = record_path(job_id)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        from .jobdir import write_atomic

        write_atomic(path, json.dumps(doc).encode())

    def summary(self) -> str:
        """One line for a dry run."""
        if not self.staged:
            line = f"# working directory: {self.shared} (shared with the cluster)"
            if self.module_paths:
                line += f"; local module paths: {', '.join(self.module_paths)}"
            return line
        line = (f"# working directory: staged, {len(self.files)} file(s) "
                f"({format_size(sum(f.size for f in self.files.values()))})")
        if self.module_names:
            line += f"; local modules: {', '.join(self.module_names)}"
        return line


def record_path(job_id: str) -> str:
    return os.path.join(local_paths.data_dir(), "staging", f"{job_id}.json")


def _walk_files(top: str) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for fn in sorted(filenames):
            yield os.path.join(dirpath, fn)


def make_plan(profile: Any, source: str, values: Mapping[str, Any],
              namespace_modules: Mapping[str, str], blobs: Mapping[str, Blob] | None = None,
              stage: Iterable[str] = (), stage_limit: str | None = None,
              cwd: str | None = None) -> Plan:
    """Decide where the job runs and find what must travel; raise :class:`StagingError` (naming
    the size and the option that raises the limit) when it is too much. Reads only metadata
    and the files to be sent (hashed once per content)."""
    cwd = os.path.realpath(cwd or os.getcwd())
    try:
        limits = Limits.of(profile, stage_limit)
    except ValueError as e:
        raise StagingError(f"--stage-limit: {e}") from None
    plan = Plan(cwd=cwd, shared=placement(profile, cwd), limits=limits, profile=profile.name)
    mods = [m for m in (local_module(n) for n in sorted(
        modules_used(source, namespace_modules, values, blobs or {}))) if m is not None]
    plan.module_names = [m.name for m in mods]
    if not plan.staged:
        _plan_shared(plan, profile, mods, source, values)
        return plan
    named = candidates(source, values)
    found = _find_staged([*profile.stage, *stage], named, cwd)
    plan.base = os.path.commonpath([cwd, *found]) if found else cwd
    for full, st in _expand(found, limits.files).items():
        rel = os.path.relpath(full, plan.base).replace(os.sep, "/")
        plan.files[rel] = LocalFile(full, rel, st.st_size, stat.S_IMODE(st.st_mode))
    plan.dirs = [os.path.relpath(d, plan.base).replace(os.sep, "/")
                 for d in [*found, *_parents_of_new_files(named, cwd)] if os.path.isdir(d)]
    staged = {f.local for f in plan.files.values()} | set(found)
    plan.rewrite = {s: os.path.relpath(os.path.normpath(s), plan.base).replace(os.sep, "/")
                    for s in [*found.values(), *named]
                    if os.path.isabs(s) and os.path.normpath(s) in staged}
    for m in mods:
        for rel in m.files:
            full = os.path.join(m.root, rel)
            st = os.stat(full)
            plan.modules[rel.replace(os.sep, "/")] = LocalFile(
                full, rel, st.st_size, stat.S_IMODE(st.st_mode))
    _check_limits(plan, profile.name)
    for f in [*plan.files.values(), *plan.modules.values()]:
        f.sha256 = file_sha256(f.local, os.stat(f.local))
    return plan


def _plan_shared(plan: Plan, profile: Any, mods: list[LocalModule], source: str,
                 values: Mapping[str, Any]) -> None:
    """Shared mode: module directories and absolute paths as the cluster sees them."""
    if not profile.path_map:
        plan.module_paths = sorted({m.root for m in mods})
        return
    plan.module_paths = [p for p in (map_path(m.root, profile.path_map) for m in mods)
                         if p is not None]
    for s in candidates(source, values):
        if os.path.isabs(s) and os.path.exists(s):
            mapped = map_path(os.path.normpath(s), profile.path_map)
            if mapped is not None and mapped != s:
                plan.rewrite[s] = mapped


def _find_staged(explicit: list[str], found_in_cell: list[str], cwd: str) -> dict[str, str]:
    """Existing paths to stage (absolute here) -> the string that named them. Paths named by
    the cell that are too broad to be meant are left out: the working directory or one of its
    parents, a directory outside it (/tmp, /usr …); ``--stage`` names those on purpose."""
    found: dict[str, str] = {}
    for s in [*explicit, *found_in_cell]:
        named = s in explicit
        full = os.path.normpath(os.path.join(cwd, os.path.expanduser(s) if named else s))
        try:
            st = os.stat(full)
        except (OSError, ValueError):
            if named:
                raise StagingError(f"--stage {s}: no such file or directory here ({full})") \
                    from None
            continue
        if not named and (is_within(cwd, full)
                          or (stat.S_ISDIR(st.st_mode) and not is_within(full, cwd))):
            continue
        found.setdefault(full, s)
    return found


def _parents_of_new_files(named: list[str], cwd: str) -> list[str]:
    """Directories under the working directory that will hold files the cell names but that do
    not exist yet (``df.to_csv('results/out.csv')``): they exist for the job too."""
    out = []
    for s in named:
        full = os.path.normpath(os.path.join(cwd, s))
        parent = os.path.dirname(full)
        if parent != cwd and is_within(parent, cwd) and not os.path.lexists(full) \
                and os.path.isdir(parent):
            out.append(parent)
    return out


def _expand(found: Iterable[str], max_files: int) -> dict[str, os.stat_result]:
    """The regular files of ``found`` (directories walked), stopping past ``max_files``."""
    out: dict[str, os.stat_result] = {}
    for full in found:
        if not os.path.isdir(full):
            out[full] = os.stat(full)
            continue
        for f in _walk_files(full):
            try:
                st = os.stat(f)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[f] = st
            if len(out) > max_files:
                return out
    return {f: st for f, st in out.items() if stat.S_ISREG(st.st_mode)}


def _check_limits(plan: Plan, profile: str) -> None:
    count = len(plan.files) + len(plan.modules)
    if count > plan.limits.files:
        raise StagingError(
            f"the cell refers to more than {plan.limits.files} files to stage ({count}+ in "
            f"{_biggest(plan)}); nothing was submitted. Raise the limit with stage_max_files = "
            f"{max(count * 2, 1000)} in profile {profile!r}, or name fewer files")
    if plan.size > plan.limits.size:
        raise StagingError(
            f"the files to stage add up to {format_size(plan.size)} ({_biggest(plan)}), over "
            f"the limit of {format_size(plan.limits.size)}; nothing was submitted. Raise it "
            f"for this cell with --stage-limit {_round_up(plan.size)}, or with stage_limit = "
            f"\"{_round_up(plan.size)}\" in profile {profile!r}")


def _round_up(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{-(-n // size)}{unit}"
    return str(n)


def _biggest(plan: Plan) -> str:
    tops: dict[str, int] = {}
    for rel, f in [*plan.files.items(), *plan.modules.items()]:
        top = rel.split("/")[0]
        tops[top] = tops.get(top, 0) + f.size
    items = sorted(tops.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{name}: {format_size(size)}" for name, size in items)
