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

The job-side half is :mod:`clusterjupyter._workdir`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import mmap
import os
import pathlib
import re
import shlex
import site
import stat
import sys
import sysconfig
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import paths as local_paths
from ._workdir import SKIP_DIRS, file_mac, safe_relpath
from .errors import ClusterError, IntegrityError
from .jobdir import blob_mac, temp_beside
from .serialize import Blob

#: defaults of the profile's stage_limit, stage_max_files and return_limit
DEFAULT_STAGE_LIMIT = 1 << 30
DEFAULT_STAGE_MAX_FILES = 1000
DEFAULT_RETURN_LIMIT = 256 << 20
#: files up to this size are read into memory to be sent; larger ones are memory-mapped
_READ_MAX = 64 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: string literals that name a place but never a file the cell means to read
_TOO_BROAD = frozenset({"", ".", "./", "..", "/", "~", "-"})
#: calls whose string arguments are command lines: their words are candidates too
_COMMAND_CALLS = frozenset({"system", "getoutput", "run_line_magic", "run_cell_magic"})


class StagingError(ClusterError):
    """The cell's files cannot travel (over a limit); nothing was submitted."""


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"512K"``, ``"100M"``, ``"1.5G"``, ``"2GiB"``, ``"1T"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", str(value).strip().lower())
        if not m:
            raise ValueError(f"invalid size {value!r}: use bytes or a size like 512K, 100M, 2G")
        n = float(m.group(1)) * _UNITS[m.group(2)]
    if n < 0:
        raise ValueError(f"invalid size {value!r}: must not be negative")
    return int(n)


def format_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- where the job runs -------------------------------------------------------------------------

def _is_within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def map_path(path: str, path_map: Mapping[str, str]) -> str | None:
    """``path`` (absolute, here) as the cluster sees it through ``path_map``; None if no entry
    covers it (the longest matching local prefix wins)."""
    best = None
    for local, remote in path_map.items():
        local = os.path.normpath(os.path.expanduser(local))
        if _is_within(path, local) and (best is None or len(local) > len(best[0])):
            best = (local, remote)
    if best is None:
        return None
    rest = os.path.relpath(path, best[0])
    return best[1].rstrip("/") if rest == "." else posixpath_join(best[1], rest)


def posixpath_join(a: str, b: str) -> str:
    return a.rstrip("/") + "/" + b.replace(os.sep, "/")


def placement(profile: Any, cwd: str) -> str | None:
    """The job's working directory on the cluster when its host sees the kernel's files
    (shared mode), else None (staged mode)."""
    if profile.path_map:
        mapped = map_path(cwd, profile.path_map)
        if mapped is not None:
            return mapped
    shared = profile.shared_fs
    if shared is None:
        shared = not profile.remote and profile.scheduler != "kubernetes"
    return cwd if shared else None


# -- what the cell refers to --------------------------------------------------------------------

def _strings_in_code(code: types.CodeType) -> Iterable[str]:
    for const in code.co_consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, types.CodeType):
            yield from _strings_in_code(const)


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False)
    except ValueError:
        return text.split()


def candidates(source: str, values: Mapping[str, Any]) -> list[str]:
    """Strings that may name files the cell uses (not yet checked against the filesystem): the
    cell's string literals, the words of its ``!cmd`` and magic arguments, string constants of
    notebook functions among ``values``, and ``pathlib`` values among them (also one level
    inside lists, tuples, sets and dict values)."""
    out: dict[str, None] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out[node.value] = None
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in _COMMAND_CALLS):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        out.update(dict.fromkeys(_words(arg.value)))
    for value in values.values():
        items = [value]
        if isinstance(value, (list, tuple, set, frozenset)):
            items += list(value)[:1000]
        elif isinstance(value, dict):
            items += list(value.values())[:1000]
        for item in items:
            if isinstance(item, pathlib.PurePath):
                out[str(item)] = None
            elif (isinstance(item, types.FunctionType)
                  and getattr(item, "__module__", None) == "__main__"):
                out.update(dict.fromkeys(_strings_in_code(item.__code__)))
    return [s for s in out if _plausible(s)]


def _plausible(s: str) -> bool:
    return 0 < len(s) <= 4096 and "\n" not in s and "\0" not in s and s not in _TOO_BROAD \
        and not s.startswith(("http://", "https://"))


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


# -- local modules ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(os.path.realpath(p))
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
    except AttributeError:
        pass
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user, str):
        roots.add(os.path.realpath(user))
    for p in sys.path:
        if p and os.path.basename(p) in ("site-packages", "dist-packages"):
            roots.add(os.path.realpath(p))
    return tuple(sorted(roots))


def is_local(module: types.ModuleType) -> bool:
    """A module of the user's own: its file is neither in the standard library nor in an
    installed site-packages directory (so it lives beside the notebook, in a project directory
    on ``sys.path``, or is an editable install's source). clusterjupyter itself is not (the
    runner ships it)."""
    name = module.__name__.split(".")[0]
    if name in sys.stdlib_module_names or name in ("__main__", "clusterjupyter"):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return not any(_is_within(real, root) for root in _installed_roots())


@dataclass
class LocalModule:
    name: str
    root: str           # the sys.path entry it is imported from
    files: list[str]    # paths relative to root


def local_module(name: str) -> LocalModule | None:
    """The files of the loaded top-level module ``name`` if it is local (:func:`is_local`)."""
    module = sys.modules.get(name)
    if module is None or not is_local(module):
        return None
    path = os.path.realpath(str(module.__file__))
    if os.path.basename(path).startswith("__init__."):
        pkg = os.path.dirname(path)
        root = os.path.dirname(pkg)
        files = []
        for dirpath, dirnames, filenames in os.walk(pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                                 and not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.endswith((".pyc", ".pyo")) and not fn.startswith("."):
                    files.append(os.path.relpath(os.path.join(dirpath, fn), root))
        return LocalModule(name, root, files)
    return LocalModule(name, os.path.dirname(path), [os.path.basename(path)])


_local_cache: tuple[int, frozenset[str]] = (-1, frozenset())


def loaded_local_modules() -> frozenset[str]:
    """Top-level names of the local modules this kernel has imported (recomputed when the
    number of loaded modules changes)."""
    global _local_cache
    count = len(sys.modules)
    if _local_cache[0] != count:
        names = frozenset(name for name, mod in list(sys.modules.items())
                          if "." not in name and isinstance(mod, types.ModuleType)
                          and is_local(mod))
        _local_cache = (count, names)
    return _local_cache[1]


def _named_in_pickle(blob: Blob, names: Iterable[str], limit: int = 64 << 20) -> set[str]:
    """Which of ``names`` occur in the blob's pickle stream (its out-of-band buffers, the bulk
    of arrays, are not searched): a class or function of a module is pickled by its name."""
    if not names or len(blob.parts) < 2 or blob.parts[1].nbytes > limit:
        return set()
    data = bytes(blob.parts[1])
    return {n for n in names if n.encode() in data}


def modules_used(source: str, namespace_modules: Mapping[str, str], values: Mapping[str, Any],
                 blobs: Mapping[str, Blob] = {}) -> set[str]:
    """Top-level names of the modules a cell may import on the cluster: modules among its
    inputs, modules its values and functions come from, those its cell imports, and the modules
    named in its pickled inputs."""
    names = {m.split(".")[0] for m in namespace_modules.values()}
    for value in values.values():
        for obj in (value, type(value)):
            mod = getattr(obj, "__module__", None)
            if isinstance(mod, str):
                names.add(mod.split(".")[0])
    try:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    except SyntaxError:
        pass
    local = loaded_local_modules()
    for blob in blobs.values():
        names.update(_named_in_pickle(blob, local - names))
    return {n for n in names if n in sys.modules}


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
        path = _record_path(job_id)
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


def _record_path(job_id: str) -> str:
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
        if not named and (_is_within(cwd, full)
                          or (stat.S_ISDIR(st.st_mode) and not _is_within(full, cwd))):
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
        if parent != cwd and _is_within(parent, cwd) and not os.path.lexists(full) \
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


# -- files coming back --------------------------------------------------------------------------

@dataclass
class Returned:
    """What happened to the files a job sent back."""

    written: list[str] = field(default_factory=list)
    kept_both: dict[str, str] = field(default_factory=dict)     # path -> where the job's went
    refused: dict[str, str] = field(default_factory=dict)       # path -> why
    left: dict[str, int] = field(default_factory=dict)          # path -> size (on the cluster)
    left_dir: str = ""

    def notice(self, job_id: str, where: str, profile: str) -> str:
        """The one notice about them ('' when nothing came back)."""
        parts = []
        if self.written:
            parts.append("wrote " + ", ".join(self.written))
        for rel, other in self.kept_both.items():
            parts.append(f"{rel} changed here since the job was submitted: kept yours, saved "
                         f"the job's as {other}")
        for rel, why in self.refused.items():
            parts.append(f"refused {rel}: {why}")
        if self.left:
            total = sum(self.left.values())
            parts.append(
                f"left on {where} ({format_size(total)}, over the return limit): "
                + ", ".join(f"{r} ({format_size(s)})" for r, s in self.left.items())
                + f" in {self.left_dir}; fetch them with %cluster files {job_id[:8]}, or raise "
                f"return_limit in profile {profile!r}")
        if not parts:
            return ""
        return f"clusterjupyter: files from job {job_id[:8]}: " + "; ".join(parts)


def fetch_left(transport: Any, paths: Any, key: bytes) -> Returned:
    """Bring back the files a finished job left where it ran (over the return limits), from
    its signed result, with the same checks as :func:`receive_files`."""
    from .jobdir import verify_document

    with transport.open(paths.result) as f:
        data = f.read()
    with transport.open(paths.result_sig) as f:
        sig = f.read()
    doc = verify_document(key, "result", data, sig)
    if doc.get("job_id") != paths.job_id:
        raise IntegrityError("result belongs to another job")
    return receive_files(transport, paths, key, doc.get("files_left", {}).get("files", {}), None)


def _confined(cwd: str, rel: str) -> str:
    """The real path ``rel`` names under ``cwd``; raise if it (through symlinks) leaves it."""
    safe_relpath(rel)
    top = os.path.realpath(cwd)
    dest = os.path.realpath(os.path.join(top, rel))
    if not _is_within(dest, top) or dest == top:
        raise IntegrityError("it leaves the working directory (through a symbolic link)")
    return dest


def _side_name(path: str, job_id: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}.job-{job_id[:8]}{ext}"


def receive_files(transport: Any, paths: Any, key: bytes, files: dict[str, Any],
                  left: dict[str, Any] | None) -> Returned:
    """Bring the files a job sent back into the kernel's working directory at submission.

    Every file is checked before it is written: its MAC (bound to the job and the path), its
    path (relative, no ``..``, not through a symlink out of the directory) and its sha256 while
    it is copied to a temporary name beside its destination. A local file that changed since
    submission (or that the job did not receive and that differs) is kept; the job's version
    is saved beside it."""
    job_id = paths.job_id
    out = Returned()
    if left:
        out.left = {str(k): int(v["size"]) for k, v in left.get("files", {}).items()}
        out.left_dir = str(left.get("dir", ""))
        out.refused.update({str(k): f"could not be read where the job ran ({v})"
                            for k, v in left.get("unreadable", {}).items()})
    try:
        with open(_record_path(job_id), "rb") as f:
            record = json.load(f)
    except FileNotFoundError:
        out.refused.update({rel: "this kernel did not submit the job (no staging record)"
                            for rel in files})
        return out
    cwd, sent = record["cwd"], record.get("sent", {})
    for rel, entry in sorted(files.items()):
        try:
            if file_mac(key, job_id, rel, entry["sha256"]) != entry.get("mac"):
                raise IntegrityError("its signature does not verify")
            dest = _confined(cwd, rel)
            _receive_one(transport, paths, entry, dest, rel, sent.get(rel), job_id, out)
        except (IntegrityError, OSError) as e:
            out.refused[rel] = str(e)
    return out


def _receive_one(transport: Any, paths: Any, entry: dict[str, Any], dest: str, rel: str,
                 sent_sha: str | None, job_id: str, out: Returned) -> None:
    sha = entry["sha256"]
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    target = dest
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError("a directory or special file is in its place here")
        current = file_sha256(dest, st)
        if current == sha:
            return                                  # already here (fetched before)
        if current != sent_sha:
            target = _side_name(dest, job_id)
            out.kept_both[rel] = os.path.relpath(target, os.path.dirname(dest)) \
                if os.path.dirname(rel) == "" else _side_name(rel, job_id)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with temp_beside(target, ".cj-") as (fd, tmp):
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as fout, transport.open(
                paths.dir + "/" + safe_relpath(entry["at"])) as fin:
            while chunk := fin.read(1 << 20):
                h.update(chunk)
                fout.write(chunk)
        if h.hexdigest() != sha:
            raise IntegrityError("its content does not match what the job signed")
        os.chmod(tmp, (int(entry.get("mode", 0o644)) & 0o777 & ~_umask()) | 0o600)
        os.replace(tmp, target)
    if target == dest:
        out.written.append(rel)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
