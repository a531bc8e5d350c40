"""The job directory: one place that names every file of a job, and the signed formats in it.

Layout under a profile's work root (the same on every backend)::

    ROOT/blobs/<sha256>              content-addressed input blobs, shared by all jobs of the root
    ROOT/blobs/.incoming-<uuid>-<n>  a large blob being sent while it is hashed (then renamed)
    ROOT/jobs/<uuid>/                one directory per job, mode 0700
        manifest.json                what to run: cell source, inputs (sha256 + MAC), options
        manifest.sig                 HMAC-SHA256 of manifest.json
        job.sh                       the script handed to the scheduler
        stdout, stderr               the cell's output, written as it happens
        displays.jsonl               rich outputs (one mime bundle per line), as they happen
        started.json                 written by the runner when the cell starts (host, pid, time)
        outputs/<n>.pkl              one blob per value sent back
        result.json / result.sig     what came back (names -> sha256 + MAC), signed
        state.json                   the exit file: final state, written last, atomically
        scheduler.log                what the scheduler itself printed (module loads, errors)
        work/                        staged files laid out; the cell's working directory is in it
        modules/                     the kernel's local modules (staged), first on sys.path
        files/<n>                    files the cell created or changed, to be sent back

Integrity: every blob and manifest carries an HMAC-SHA256 made with a per-user secret that lives
outside the job directory (0600). A blob's MAC is computed over its sha256 (hash-then-MAC), so the
content is hashed once; the MAC binds the job id so results cannot be swapped between jobs.
Nothing is unpickled unless its MAC verifies.

Standard library only: the runner imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import posixpath
import secrets
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

SECRET_ENV = "CLUSTERJUPYTER_SECRET_FILE"


class IntegrityError(Exception):
    """A signature did not verify: the data was not written by this user's clusterjupyter."""


# -- secret and signatures ----------------------------------------------------------------------

def load_secret(path: str, create: bool = False) -> bytes:
    """Read the per-user secret, creating it (0600, in a 0700 directory) if asked to."""
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except FileNotFoundError:
        if not create:
            raise IntegrityError(
                f"no clusterjupyter secret at {path}; results cannot be verified") from None
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        key = secrets.token_hex(32).encode()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".secret-")
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        try:
            os.link(tmp, path)  # never replace a secret another process created meanwhile
        except FileExistsError:
            pass
        os.unlink(tmp)
        return load_secret(path)
    if len(key) < 32:
        raise IntegrityError(f"clusterjupyter secret at {path} is too short")
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
    return key


def mac(key: bytes, *parts: str | bytes) -> str:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def blob_mac(key: bytes, job_id: str, sha256: str) -> str:
    return mac(key, b"blob", job_id, sha256)


def check(expected: str, got: str, what: str) -> None:
    if not hmac.compare_digest(expected, got):
        raise IntegrityError(f"signature of {what} does not verify; refusing to unpickle it")


def sign_document(key: bytes, kind: str, doc: dict,
                  indent: int | None = 1) -> tuple[bytes, bytes]:
    """Serialize ``doc`` and sign it; returns (json bytes, signature bytes). ``indent=None``:
    compact (C-encoded, several times faster: many documents at once, e.g. a sweep's)."""
    data = json.dumps(doc, sort_keys=True, indent=indent).encode()
    return data, mac(key, kind, data).encode()


def verify_document(key: bytes, kind: str, data: bytes, sig: bytes) -> dict:
    check(mac(key, kind, data), sig.decode(errors="replace").strip(), kind)
    return json.loads(data)


def sign_exit(key: bytes, job_id: str, doc: dict) -> bytes:
    """The exit file's bytes: ``doc`` plus a MAC over it bound to the job id."""
    body = json.dumps(doc, sort_keys=True)
    return json.dumps({**doc, "mac": mac(key, b"exit", job_id, body)}, sort_keys=True).encode()


def verify_exit(key: bytes, job_id: str, data: bytes) -> dict:
    """The exit file's document, or :class:`IntegrityError` if it was not written by this
    job's runner (unsigned, altered, copied from another job, not JSON)."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise IntegrityError("the exit file state.json is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("mac"), str):
        said = ""
        if isinstance(doc, dict) and doc.get("reason"):
            # a runner that could not read the secret writes its reason unsigned
            said = f" (unverified, it says: {str(doc['reason'])[:300]})"
        raise IntegrityError(f"the exit file state.json is not signed{said}; if the cluster "
                             "runs an older clusterjupyter, ship the runner (ship_runner = true) "
                             "or install the same version there")
    got = doc.pop("mac")
    check(mac(key, b"exit", job_id, json.dumps(doc, sort_keys=True)), got, "the exit file")
    return doc


# -- paths --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobPaths:
    """Every path of one job, as POSIX strings (valid on the machine that runs the job)."""

    root: str
    job_id: str

    @property
    def blobs(self) -> str:
        return posixpath.join(self.root, "blobs")

    def blob(self, sha256: str) -> str:
        return posixpath.join(self.blobs, sha256)

    @property
    def dir(self) -> str:
        return posixpath.join(self.root, "jobs", self.job_id)

    def _f(self, name: str) -> str:
        return posixpath.join(self.dir, name)

    manifest = property(lambda self: self._f("manifest.json"))
    manifest_sig = property(lambda self: self._f("manifest.sig"))
    script = property(lambda self: self._f("job.sh"))
    stdout = property(lambda self: self._f("stdout"))
    stderr = property(lambda self: self._f("stderr"))
    displays = property(lambda self: self._f("displays.jsonl"))
    started = property(lambda self: self._f("started.json"))
    outputs = property(lambda self: self._f("outputs"))
    result = property(lambda self: self._f("result.json"))
    result_sig = property(lambda self: self._f("result.sig"))
    state = property(lambda self: self._f("state.json"))
    scheduler_log = property(lambda self: self._f("scheduler.log"))
    work = property(lambda self: self._f("work"))
    modules = property(lambda self: self._f("modules"))
    files = property(lambda self: self._f("files"))

    def output(self, index: int) -> str:
        return posixpath.join(self.outputs, f"{index}.pkl")

    @classmethod
    def from_dir(cls, job_dir: str) -> "JobPaths":
        job_dir = job_dir.rstrip("/")
        jobs = posixpath.dirname(job_dir)
        if posixpath.basename(jobs) != "jobs":
            raise ValueError(f"{job_dir} is not a job directory (expected ROOT/jobs/ID)")
        return cls(posixpath.dirname(jobs), posixpath.basename(job_dir))


# -- atomic local files (used by the runner and the local transport) -----------------------------

@contextlib.contextmanager
def temp_beside(path: str, prefix: str) -> Iterator[tuple[int, str]]:
    """A temporary file (descriptor, name) in ``path``'s folder, to write and then rename over
    ``path``; removed if the block fails."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=prefix)
    try:
        yield fd, tmp
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with temp_beside(path, "." + os.path.basename(path) + ".") as (fd, tmp):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


def write_json_atomic(path: str, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, sort_keys=True).encode())
