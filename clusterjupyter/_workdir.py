"""The job's working directory, on the machine that runs the job (imported by the runner).

The manifest's ``workdir`` entry (signed with the rest of the manifest) says where the cell runs:

* ``{"mode": "shared", "cwd": PATH, "module_paths": [...], "rewrite": {...}}`` — the host sees
  the kernel's files: the cell runs in ``PATH`` (the kernel's working directory, or its mapped
  path on the cluster); directories holding the kernel's local modules go on ``sys.path``.
* ``{"mode": "staged", "cwd": REL, "files": {...}, "modules": {...}, ...}`` — the host does not:
  every staged file is copied from its content-addressed blob (MAC and sha256 checked) into
  ``JOBDIR/work/`` at its path relative to the layout base, local modules into
  ``JOBDIR/modules/``, and the cell runs in ``JOBDIR/work/REL``. After the cell, the files it
  created or changed under that directory are listed (sha256 + MAC bound to the job and the path)
  for the kernel to bring back, up to the return limits; the others stay and are listed too.

The runner keeps its own files in the job directory either way (its paths are absolute).
Standard library only.
"""

from __future__ import annotations

import ast
import hashlib
import os
import posixpath
import shutil
import stat
import sys
import types
from typing import Any

from .jobdir import IntegrityError, JobPaths, blob_mac, check, mac

#: staged files from this size on are hard links to their blob instead of copies (a cell that
#: changes one in place makes its blob unusable: the blob is removed, and sent again next time)
LINK_MIN = 8 << 20
#: directories never staged and never sent back (caches, version control, checkpoints)
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints"})


def file_mac(key: bytes, job_id: str, rel: str, sha256: str) -> str:
    """MAC of a file coming back: binds its content to the job and to its path."""
    return mac(key, b"file", job_id, rel, sha256)


def safe_relpath(rel: str) -> str:
    """``rel`` if it is a plain relative POSIX path that stays inside its base; else raise."""
    if (not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel
            or rel.startswith("/") or posixpath.normpath(rel) != rel
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise IntegrityError(f"refusing the path {rel!r}: not a plain relative path")
    return rel


def rewrite_source(source: str, mapping: dict[str, str]) -> str:
    """``source`` with every plain string literal equal to a key of ``mapping`` replaced by the
    mapped value, in place (line numbers are kept: only single-line literals are changed)."""
    if not mapping:
        return source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    inside_fstrings = {id(n) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr)
                       for n in ast.walk(j)}
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value in mapping and id(node) not in inside_fstrings
                and node.lineno == node.end_lineno and node.end_col_offset is not None):
            edits.setdefault(node.lineno, []).append(
                (node.col_offset, node.end_col_offset, repr(mapping[node.value])))
    lines = source.splitlines(True)
    for lineno, spans in edits.items():
        raw = lines[lineno - 1].encode()     # ast offsets count UTF-8 bytes
        for start, end, text in sorted(spans, reverse=True):
            raw = raw[:start] + text.encode() + raw[end:]
        lines[lineno - 1] = raw.decode()
    return "".join(lines)


def _replace_consts(code: types.CodeType, mapping: dict[str, str]) -> types.CodeType:
    consts = tuple(mapping.get(c, c) if isinstance(c, str)
                   else _replace_consts(c, mapping) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_consts=consts) if consts != code.co_consts else code


def _copy_verified(src: str, dst: str, sha256: str, mode: int) -> None:
    """Copy the blob ``src`` to ``dst``, checking it hashes to ``sha256`` (no partial file)."""
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    tmp = dst + ".cj-incoming"
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    if digest.hexdigest() != sha256:
        os.unlink(tmp)
        raise IntegrityError(f"the staged file {dst} was altered; refusing to use it")
    os.chmod(tmp, (mode & 0o777) or 0o600)
    os.replace(tmp, dst)


def _link_verified(src: str, dst: str, sha256: str, mode: int) -> os.stat_result:
    """Hard-link the blob ``src`` at ``dst`` once it hashes to ``sha256`` (a copy where links
    cannot be made); returns the file's status as laid out."""
    if _sha256(src) != sha256:
        raise IntegrityError(f"the staged file {dst} was altered; refusing to use it")
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    try:
        os.link(src, dst)
        os.chmod(dst, (mode & 0o777) or 0o600)
    except OSError:
        _copy_verified(src, dst, sha256, mode)
    return os.lstat(dst)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _scan(top: str) -> dict[str, os.stat_result]:
    """Regular files under ``top`` (symlinks not followed, SKIP_DIRS left out), by relative
    POSIX path."""
    out: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(full, top).replace(os.sep, "/")] = st
    return out


class Workdir:
    """Where the cell runs; built from the manifest's ``workdir`` entry by :meth:`enter`."""

    def __init__(self, doc: dict[str, Any], paths: JobPaths, key: bytes):
        self.doc = doc
        self.paths = paths
        self.key = key
        self.cwd = ""
        self.rewrite: dict[str, str] = {}
        self.staged: dict[str, str] = {}          # rel to cwd -> sha256 as laid out
        self.before: dict[str, os.stat_result] = {}
        self.linked: dict[str, tuple[str, os.stat_result]] = {}   # path -> (blob, status)

    @classmethod
    def enter(cls, manifest: dict[str, Any], paths: JobPaths, key: bytes) -> "Workdir | None":
        """Lay the working directory out, make it the process's, put local modules on
        ``sys.path``. Returns None for a manifest without a ``workdir`` entry."""
        doc = manifest.get("workdir")
        if not doc:
            return None
        wd = cls(doc, paths, key)
        # as in the kernel: the working directory is the first place imports look, then the
        # local modules (``python -m`` put the directory the job started in first)
        if sys.path and sys.path[0] in ("", os.getcwd(), paths.dir):
            del sys.path[0]
        if doc.get("mode") == "shared":
            wd._enter_shared()
        else:
            wd._enter_staged()
        os.chdir(wd.cwd)
        sys.path.insert(0, wd.cwd)
        manifest["cell"] = rewrite_source(manifest["cell"], wd.rewrite)
        return wd

    def patch_inputs(self, inputs: dict[str, Any], ns: dict[str, Any]) -> None:
        """Absolute paths the kernel's inputs name point where the files are for this job too:
        ``pathlib`` values, and string constants of notebook functions."""
        if not self.rewrite:
            return
        import pathlib

        for name, value in list(inputs.items()):
            if isinstance(value, pathlib.PurePath) and str(value) in self.rewrite:
                inputs[name] = ns[name] = type(value)(self.rewrite[str(value)])
            elif (isinstance(value, types.FunctionType)
                  and getattr(value, "__module__", None) == "__main__"):
                value.__code__ = _replace_consts(value.__code__, self.rewrite)

    def _enter_shared(self) -> None:
        self.cwd = self.doc["cwd"]
        if not os.path.isdir(self.cwd):
            raise FileNotFoundError(
                f"the working directory {self.cwd} does not exist where the job runs; fix the "
                "profile's path_map, or set shared_fs = false to stage files instead")
        for p in reversed(self.doc.get("module_paths", [])):
            if p not in sys.path:
                sys.path.insert(0, p)
        self.rewrite = dict(self.doc.get("rewrite", {}))

    def _enter_staged(self) -> None:
        work = self.paths.work
        os.makedirs(work, mode=0o700, exist_ok=True)
        cwd_rel = self.doc.get("cwd", "")
        self.cwd = os.path.join(work, safe_relpath(cwd_rel)) if cwd_rel else work
        self._lay_out(self.doc.get("files", {}), work)
        for rel in self.doc.get("dirs", []):
            os.makedirs(os.path.join(work, safe_relpath(rel)), mode=0o700, exist_ok=True)
        modules = self.doc.get("modules", {})
        if modules:
            self._lay_out(modules, self.paths.modules)
            sys.path.insert(0, self.paths.modules)
        os.makedirs(self.cwd, mode=0o700, exist_ok=True)
        self.rewrite = {lit: os.path.join(work, safe_relpath(rel))
                        for lit, rel in self.doc.get("rewrite", {}).items()}
        prefix = "" if not cwd_rel else cwd_rel + "/"
        for rel, entry in self.doc.get("files", {}).items():
            if rel.startswith(prefix):
                self.staged[rel[len(prefix):]] = entry["sha256"]
        self.before = _scan(self.cwd)

    def _lay_out(self, files: dict[str, dict[str, Any]], top: str) -> None:
        for rel, entry in files.items():
            sha = entry["sha256"]
            check(blob_mac(self.key, self.paths.job_id, sha), entry["mac"], f"staged file {rel}")
            dst = os.path.join(top, safe_relpath(rel))
            mode = entry.get("mode", 0o600)
            if int(entry.get("size", 0)) >= LINK_MIN:
                st = _link_verified(self.paths.blob(sha), dst, sha, mode)
                if st.st_nlink > 1:
                    self.linked[dst] = (self.paths.blob(sha), st)
            else:
                _copy_verified(self.paths.blob(sha), dst, sha, mode)

    def _forget_changed_blobs(self) -> None:
        """A linked file the cell changed in place changed its blob: remove that blob so no
        job uses it (the kernel sends the file again)."""
        for path, (blob, st) in self.linked.items():
            try:
                now = os.lstat(path)
            except OSError:
                continue              # removed or renamed away: the blob itself is intact
            if now.st_ino == st.st_ino and (now.st_size, now.st_mtime_ns) \
                    != (st.st_size, st.st_mtime_ns):
                try:
                    if os.lstat(blob).st_ino == st.st_ino:
                        os.unlink(blob)
                except OSError:
                    pass

    def collect(self) -> dict[str, Any]:
        """What to report in the result (staged mode): the files the cell created or changed in
        its working directory. Those within the return limits are linked into ``JOBDIR/files/``
        (``files``); the others stay where the cell left them (``files_left``), signed the same
        way, to be fetched later. Each entry: where it is (``at``, relative to the job
        directory), sha256, size, mode and a MAC bound to the job and its path."""
        if self.doc.get("mode") == "shared":
            return {}
        self._forget_changed_blobs()
        max_size = int(self.doc.get("return_limit", 0))
        max_files = int(self.doc.get("return_max_files", 0))
        os.makedirs(self.paths.files, mode=0o700, exist_ok=True)
        files: dict[str, Any] = {}
        left: dict[str, Any] = {}
        unreadable: dict[str, str] = {}
        total = 0
        for rel, st in self._changed():
            fits = total + st.st_size <= max_size and len(files) < max_files
            full = os.path.join(self.cwd, rel)
            at = os.path.join(self.paths.files, str(len(files))) if fits else full
            try:
                if fits:
                    try:
                        os.link(full, at)
                    except OSError:
                        shutil.copyfile(full, at)
                sha = _sha256(at)
            except OSError as e:          # one unreadable file must not lose the result
                unreadable[rel] = f"{type(e).__name__}: {e}"
                continue
            if self.staged.get(rel) == sha:   # touched, same content
                if fits:
                    os.unlink(at)
                continue
            entry = {"at": os.path.relpath(at, self.paths.dir).replace(os.sep, "/"),
                     "sha256": sha, "size": st.st_size,
                     "mode": stat.S_IMODE(st.st_mode) & 0o777,
                     "mac": file_mac(self.key, self.paths.job_id, rel, sha)}
            if fits:
                total += st.st_size
                files[rel] = entry
            else:
                left[rel] = entry
        out: dict[str, Any] = {"files": files}
        if left or unreadable:
            out["files_left"] = {"dir": self.cwd, "files": left, "unreadable": unreadable}
        return out

    def _changed(self) -> list[tuple[str, os.stat_result]]:
        out = []
        for rel, st in sorted(_scan(self.cwd).items()):
            old = self.before.get(rel)
            if old is None or (old.st_size, old.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                out.append((rel, st))
        return out
