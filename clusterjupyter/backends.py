"""A backend is a scheduler plus a transport for one profile, and the submit pipeline over them.

``cell → capture → payload → job directory → transport → scheduler`` on the way out and
``exit file → verified result → values`` on the way back are the same for every backend; only
the scheduler and the transport differ.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import paths as local_paths
from .errors import ClusterError, ProfileError
from .failure import describe
from .jobdir import JobPaths, load_secret, sign_document
from .journal import Journal, JobRecord, default_journal
from .monitor import CANCEL_REQUESTED, Monitor
from .payload import JobResult, Packed, load_result, manifest_doc
from .profiles import Profile, get_profile, load_profiles
from .resources import Resources
from .schedulers import JobSpec, scheduler_class
from .states import JobState
from .transports import LocalTransport, Transport

#: modules the runner needs on the cluster (shipped when the profile says ship_runner)
RUNTIME_MODULES = ("__init__.py", "runner.py", "_inputs.py", "_jobshell.py", "_outputs.py",
                   "_exitfile.py", "serialize.py", "jobdir.py", "_display.py", "_mpl_backend.py",
                   "_figures.py", "_workdir.py", "context.py", "bundle.py")
PROGRESS_THRESHOLD = 64 << 20


@dataclass
class Submission:
    """Everything the kernel side decided about one job before it is sent."""

    source: str
    has_result: bool
    packed: Packed
    name: str
    resources: Resources
    outputs: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kernel_id: str = ""
    notebook: str = ""
    progress: Any = None      # factory(total, label) -> Progress, for large uploads
    workdir: Any = None       # staging.Plan: where the job runs, the files and modules it takes


def make_transport(profile: Profile) -> Transport:
    if profile.remote:
        from .kernelprompt import kernel_prompt
        from .transports.ssh import SSHTransport

        return SSHTransport.from_profile(profile, prompt=kernel_prompt)
    return LocalTransport()


class Backend:
    """Scheduler + transport + work root of one profile."""

    def __init__(self, profile: Profile, journal: Journal | None = None):
        self.profile = profile
        self.name = profile.name
        self.journal = journal or default_journal()
        self.transport = make_transport(profile)
        self.scheduler = scheduler_class(profile.scheduler)(self.transport,
                                                            profile.scheduler_options)
        if profile.faults:      # fault injection: both wrapped, the scheduler over the wrapper
            from .faults import FaultPlan, wrap

            self.transport, self.scheduler = wrap(
                FaultPlan.parse(profile.faults, profile.name), self.transport,
                lambda t: scheduler_class(profile.scheduler)(t, profile.scheduler_options))
        self.monitor = Monitor(self.name, self.scheduler, self.transport, self.journal,
                               lambda: self.key, self.watch_interval,
                               lambda *end: describe(self, *end))
        self._root: str | None = None
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self._pythonpath: str | None = None
        self._remote_secret: str | None = None

    @property
    def watch_interval(self) -> float:
        """Seconds between exit-file checks while a young job's cell waits (one SFTP stat
        over SSH, about 0.5 ms of the host's time; the interval grows with the job's age)."""
        return self.transport.watch_interval

    @property
    def root(self) -> str:
        if self._root is None:
            self._root = self.transport.expand(self.profile.work_root)
        return self._root

    def paths(self, rec: JobRecord) -> JobPaths:
        return JobPaths.from_dir(rec.job_dir)

    @property
    def key(self) -> bytes:
        return load_secret(local_paths.secret_path(), create=True)

    # -- setup ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the work root, place the secret and (for remote hosts) the runner. Once."""
        with self._prepare_lock:
            if self._prepared:
                return
            t = self.transport
            t.makedirs(posixpath.join(self.root, "blobs"))
            t.makedirs(posixpath.join(self.root, "jobs"))
            key = self.key
            if t.shares_filesystem:
                self._remote_secret = local_paths.secret_path()
                # another interpreter here may not have this package: it takes the runner too
                if self.profile.ship_runner and self.profile.python not in (None, sys.executable):
                    self._pythonpath = self._ship_runner()
            else:
                self._remote_secret = posixpath.join(self.root, ".secret")
                try:
                    same = t.read(self._remote_secret).strip() == key
                except OSError:
                    same = False
                if not same:
                    t.write(self._remote_secret, key, 0o600)
                if self.profile.ship_runner:
                    self._pythonpath = self._ship_runner()
            self._prepared = True

    def _ship_runner(self) -> str:
        here = os.path.dirname(os.path.abspath(__file__))
        files = {}
        for name in RUNTIME_MODULES:
            with open(os.path.join(here, name), "rb") as f:
                files[name] = f.read()
        digest = hashlib.sha256(b"".join(files[n] for n in sorted(files))).hexdigest()[:16]
        lib = posixpath.join(self.root, "lib", digest)
        pkg = posixpath.join(lib, "clusterjupyter")
        marker = posixpath.join(pkg, ".complete")
        if not self.transport.existing([marker]):
            self.transport.makedirs(pkg)
            self.transport.write_many({posixpath.join(pkg, name): (data, 0o600)
                                       for name, data in files.items()})
            self.transport.write(marker, b"", 0o600)
        return lib

    # -- submit -----------------------------------------------------------------------------
    def spec(self, job_id: str, sub: Submission) -> JobSpec:
        return JobSpec(job_id=job_id, name=sub.name, paths=JobPaths(self.root, job_id),
                       resources=self.profile.default_resources.merged(sub.resources),
                       python=self.interpreter, secret_path=self._remote_secret or "",
                       prelude=list(self.profile.prelude), env=dict(self.profile.env),
                       pythonpath=self._pythonpath)

    def script(self, sub: Submission) -> str:
        """The job script that would be submitted (nothing is written or sent)."""
        self.prepare()
        return self.scheduler.render(self.spec("0" * 32, sub))

    @property
    def interpreter(self) -> str:
        """The jobs' interpreter: the synced environment's (``%cluster env sync``), or the
        profile's."""
        from .envsync import interpreter

        return interpreter(self.profile)

    def check_environment(self, sub: Submission) -> None:
        """The environment guard (:mod:`.envguard`): raise EnvironmentMismatch, before anything
        is written, when the job's interpreter cannot load what the cell needs; print a one-line
        warning for smaller differences. The interpreter is probed once (cached). With
        ``environment = "sync"`` a matching environment is built first when there is none or
        the one in use no longer matches."""
        p = self.profile
        if p.environment == "off" or p.scheduler == "kubernetes" or (
                not p.remote and p.python in (None, sys.executable)
                and p.environment != "sync"):
            return
        from . import envguard, envsync
        from .envprobe import interpreter_info

        transport = getattr(self.transport, "inner", self.transport)   # no injected faults
        if p.environment == "sync" and envsync.active(p) is None:
            envguard.job_needs(sub, self.name)
            self._sync()
        try:
            info = interpreter_info(transport, p, self.interpreter)
            if not p.ship_runner and not info.clusterjupyter:
                raise ClusterError(
                    f"{self.interpreter} on {transport.where} cannot import clusterjupyter and "
                    f"profile {self.name!r} has ship_runner = false: set ship_runner = true "
                    f"(the runner travels with the job) or install clusterjupyter there")
            warning = envguard.check(info, sub, self.name, self.interpreter, transport.where)
        except envguard.EnvironmentMismatch:
            if p.environment != "sync":
                raise
            self._sync()      # the kernel's environment changed: another environment
            warning = envguard.check(interpreter_info(transport, p, self.interpreter), sub,
                                     self.name, self.interpreter, transport.where)
        if warning:
            print(warning, file=sys.stderr)

    def _sync(self) -> None:
        from . import envguard, envreqs, envsync

        self.prepare()
        reqs = envreqs.kernel_requirements(modules=envguard.needed_by_profile(self.name))
        envsync.sync(self, reqs, say=lambda line: print(line, file=sys.stderr))

    def submit(self, sub: Submission) -> JobRecord:
        """Send the job and submit it exactly once; the record is in the journal afterwards."""
        self.check_environment(sub)
        self.prepare()
        job_id = uuid.uuid4().hex
        spec = self.spec(job_id, sub)
        paths = spec.paths
        t = self.transport
        t.makedirs(paths.dir, 0o700)
        key = self.key
        self._send_blobs(sub, paths)
        doc = manifest_doc(job_id, sub.name, sub.source, sub.has_result, sub.packed, key,
                           sub.deleted, sub.outputs)
        if sub.workdir is not None:
            doc["workdir"] = sub.workdir.manifest(key, job_id)
            sub.workdir.remember(job_id)
        data, sig = sign_document(key, "manifest", doc)
        t.write_many({paths.manifest: (data, 0o600), paths.manifest_sig: (sig, 0o600),
                      paths.script: (self.scheduler.render(spec).encode(), 0o700)})
        rec = JobRecord(id=job_id, name=sub.name, profile=self.name,
                        scheduler=self.scheduler.name, state=JobState.PENDING,
                        submitted=time.time(), cell=sub.source, job_dir=paths.dir,
                        kernel_id=sub.kernel_id, notebook=sub.notebook,
                        outputs=sub.outputs, options=spec.resources.to_dict())
        self.journal.add(rec)
        connects = t.connects
        try:
            rec.native_id = self.scheduler.submit(spec)
        except Exception as e:
            self.monitor.count(submissions=1, submissions_retried=int(t.connects > connects))
            self.journal.update(job_id, state=JobState.FAILED, finished=time.time(),
                                reason=f"submission failed: {e}")
            raise
        self.journal.update(job_id, native_id=rec.native_id)
        self.monitor.count(submissions=1, submissions_retried=int(t.connects > connects))
        self.monitor.track(rec)
        return rec

    def _send_blobs(self, sub: Submission, paths: JobPaths) -> None:
        """Put every input blob under its content address, sending only what is not there.

        A large blob whose address is not known yet is hashed in a thread while it is sent to a
        staging name, then renamed to its address: the upload does not wait for the hash.
        """
        t = self.transport
        blobs = dict(sub.packed.blobs)
        if sub.workdir is not None:
            blobs.update(sub.workdir.blobs())     # staged files and local modules
        store = self.journal.fingerprints
        known = {name: b.known_sha256(store=store) for name, b in blobs.items()}
        present = t.existing({paths.blob(sha) for sha in known.values() if sha})
        for n, (name, blob) in enumerate(blobs.items()):
            sha = blob.known_sha256(store=store)    # known now if an equal blob was just sent
            if sha is not None and paths.blob(sha) in present:
                continue
            progress = None
            if sub.progress is not None and blob.size >= PROGRESS_THRESHOLD:
                progress = sub.progress(blob.size, f"sending {name}")
            try:
                if sha is not None:
                    t.put_blob(blob, paths.blob(sha), progress)
                else:
                    sha = self._put_hashing(blob, paths, n, progress, store)
            finally:
                if progress is not None:
                    progress.close()
            present.add(paths.blob(sha))

    def _put_hashing(self, blob: Any, paths: JobPaths, n: int, progress: Any,
                     store: Any) -> str:
        t = self.transport
        digest = blob.hash_in_background(store)
        staging = posixpath.join(paths.blobs, f".incoming-{paths.job_id}-{n}")
        try:
            t.put_blob(blob, staging, progress)
        except BaseException:
            digest()
            raise
        try:
            sha = digest()
            t.rename(staging, paths.blob(sha))
        except BaseException:
            try:
                t.remove_tree(staging)
            except Exception:
                pass
            raise
        return sha

    # -- after ------------------------------------------------------------------------------
    def has_result(self, rec: JobRecord) -> bool:
        """Whether the job left a result (the signed exit file says so; asked only when the
        journal does not know, e.g. for a job whose end was recorded without its exit file)."""
        if rec.result_status != "none":
            return True
        p = self.paths(rec)
        return bool(self.transport.existing([p.result_sig]))

    def fetch_result(self, rec: JobRecord, namespace: dict, main: Any) -> JobResult:
        """Verify and unpickle a finished job's result."""
        paths = self.paths(rec)
        try:
            result = load_result(paths, self.key, self.transport.open, namespace, main)
        except FileNotFoundError:
            raise ClusterError(f"job {rec.id[:8]} ({rec.state.value}) has no result"
                               + (f": {rec.reason}" if rec.reason else "")) from None
        if result.files or result.files_left:
            from .staging import receive_files

            returned = receive_files(self.transport, paths, self.key, result.files,
                                     result.files_left)
            notice = returned.notice(rec.id, self.transport.where, self.name)
            if notice:
                print(notice, file=sys.stderr)
        return result

    def logs(self, rec: JobRecord, stream: str = "stdout", tail: int | None = 200) -> str:
        p = self.paths(rec)
        path = {"stdout": p.stdout, "stderr": p.stderr, "scheduler": p.scheduler_log}[stream]
        return self.transport.tail(path, tail)

    def log_tail(self, rec: JobRecord, lines: int = 15) -> str:
        """The last lines of stderr and the scheduler log, for failure messages."""
        parts = []
        for stream in ("stderr", "scheduler"):
            try:
                text = self.logs(rec, stream, lines).rstrip()
            except Exception:
                text = ""
            if text:
                parts.append(f"[{stream}]\n{text}")
        return "\n".join(parts)

    def cancel(self, rec: JobRecord) -> None:
        if rec.state.final or not rec.native_id:
            return
        # recorded first, so whichever process sees the job end knows it was cancelled
        self.journal.update(rec.id, reason=CANCEL_REQUESTED)
        self.monitor.track(rec)
        self.monitor.cancel_requested(rec.id)
        self.scheduler.cancel([rec.native_id])

    def refresh(self, records: list[JobRecord]) -> None:
        """Bring active records up to date (jobs no monitor in this process is watching)."""
        active = [r for r in records if not r.state.final]
        for r in active:
            self.monitor.track(r)
        if active:
            self.monitor.poll_once()


_backends: dict[tuple[str, str], Backend] = {}
_lock = threading.Lock()


def backend_for(profile: Profile | str | None) -> Backend:
    """The (cached) backend of a profile; a changed profile gets a new backend."""
    if not isinstance(profile, Profile):
        profile = get_profile(profile)
    key = (profile.name, repr(profile.to_dict()) + local_paths.journal_path())
    with _lock:
        b = _backends.get(key)
        if b is None:
            b = _backends[key] = Backend(profile)
        return b


def backend_for_record(rec: JobRecord) -> Backend:
    profiles = load_profiles()
    if rec.profile not in profiles:
        raise ProfileError(f"job {rec.id[:8]} ran on profile {rec.profile!r}, which no longer "
                           f"exists; profiles: {', '.join(profiles)}")
    return backend_for(profiles[rec.profile])
