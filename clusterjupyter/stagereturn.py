"""After a staged job: the files it created or changed come back into the kernel's working
directory, authenticated, confined to it and never over a local file that changed since
submission (:func:`receive_files`, :func:`fetch_left`), told in one notice (:class:`Returned`).
Part of :mod:`clusterjupyter.staging`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from ._workdir import file_mac, safe_relpath
from .errors import IntegrityError
from .jobdir import temp_beside
from .stagefind import format_size, is_within
from .stageplan import file_sha256, record_path
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
    if not is_within(dest, top) or dest == top:
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
        with open(record_path(job_id), "rb") as f:
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
