"""Sweeps: one cell over many parameter values, submitted as one job array.

Every element is an ordinary job of the journal (its own directory, signed manifest, result
and exit file), so the runner, the monitor and the result checks are the single-job ones.
What a sweep adds:

* the inputs shared by every element are sent once (content-addressed blobs); an element's own
  files are only its signed manifest, naming its parameters' (small) blobs;
* one script for the whole array, which finds its element's directory from the scheduler's
  array index, and one submission (:meth:`Scheduler.submit_array`);
* one sweep record in the journal with its elements by index and attempt; a retry is a new
  array of the same sweep over the elements that did not complete.

The monitor queries the scheduler once per tick for all the jobs of a profile (an array's
elements included) and notices finished elements by their exit files, in one batch.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import posixpath
import time
import uuid
from typing import Any, Iterator, Sequence

from . import serialize
from .backends import Backend, Submission, backend_for_record
from .errors import ClusterError
from .jobdir import IntegrityError, JobPaths, blob_mac, check, mac, sign_document
from .jobdir import verify_document
from .journal import Journal, JobRecord, default_journal
from .jobs import Job
from .payload import manifest_doc
from .states import JobState
from .sweep import Counts, count, element_id, gather, progress_line


def default_max_running() -> int:
    return os.cpu_count() or 1


def _params_mac(key: bytes, sweep_id: str, data: bytes) -> str:
    return mac(key, "sweep-params", sweep_id, data)


def submit(backend: Backend, sub: Submission, params: list[dict[str, Any]], axes: list[str],
           max_running: int, main: Any) -> "Sweep":
    """Send the shared inputs once and submit every element as one job array."""
    backend.check_environment(sub)     # refused before anything is written, as a single job
    backend.prepare()
    sweep_id = uuid.uuid4().hex[:24]
    key = backend.key
    data = pickle.dumps(params)
    backend.journal.add_sweep({
        "id": sweep_id, "name": sub.name, "profile": backend.name, "created": time.time(),
        "size": len(params), "axes": axes, "outputs": sub.outputs, "params": data,
        "params_mac": _params_mac(key, sweep_id, data)})
    opts = serialize.DumpOptions(main=main)
    own = [{n: serialize.dump(v, opts) for n, v in p.items()} for p in params]
    shared = dict(sub.packed.blobs)
    every = dict(shared)
    for i, blobs in enumerate(own):
        every.update({f"{n}#{i}": b for n, b in blobs.items()})
    backend._send_blobs(dataclasses.replace(sub, packed=dataclasses.replace(
        sub.packed, blobs=every)), JobPaths(backend.root, sweep_id))
    docs = {}
    for i, blobs in enumerate(own):
        eid = element_id(sweep_id, i)
        packed = dataclasses.replace(sub.packed, blobs={**shared, **blobs})
        doc = manifest_doc(eid, sub.name, sub.source, sub.has_result, packed, key,
                           sub.deleted, sub.outputs)
        doc["sweep"] = {"id": sweep_id, "index": i, "params": sorted(blobs)}
        if sub.workdir is not None:
            doc["workdir"] = sub.workdir.manifest(key, eid)
        docs[i] = doc
    Sweep(sweep_id, backend)._submit_array(sweep_id, docs, 0, max_running, sub)
    return Sweep(sweep_id, backend)


def rebind(doc: Any, key: bytes, job_id: str) -> Any:
    """A verified manifest made for another element: every blob entry's MAC bound to
    ``job_id`` (the blobs themselves are already on the cluster)."""
    if isinstance(doc, dict):
        out = {k: rebind(v, key, job_id) for k, v in doc.items()}
        if "sha256" in out and "mac" in out:
            out["mac"] = blob_mac(key, job_id, out["sha256"])
        return out
    if isinstance(doc, list):
        return [rebind(v, key, job_id) for v in doc]
    return doc


class Element:
    """One element of a sweep: its parameters and its latest attempt's job."""

    def __init__(self, sweep: "Sweep", index: int, params: dict[str, Any], job: Job):
        self.sweep, self.index, self.params, self.job = sweep, index, params, job

    @property
    def state(self) -> JobState:
        return self.job.state

    @property
    def done(self) -> bool:
        return self.state.final

    @property
    def ok(self) -> bool:
        return self.state is JobState.COMPLETED

    def outputs(self) -> dict[str, Any]:
        """The names the element's cell bound, with their values."""
        return dict(self.job.load(*self.sweep.namespace).values)

    @property
    def value(self) -> Any:
        """The element's cell value (raises the element's exception)."""
        res = self.job.load(*self.sweep.namespace)
        if res.exception is not None:
            raise res.exception
        return res.value if res.has_value else None

    @property
    def exception(self) -> BaseException | None:
        return self.job.exception()

    @property
    def stdout(self) -> str:
        return self.job.logs("stdout")

    @property
    def stderr(self) -> str:
        return self.job.logs("stderr")

    def first_error_line(self) -> str:
        exc = self.exception
        if exc is None:
            return ""
        text = f"{type(exc).__name__}: {exc}".strip()
        return text.splitlines()[0] if text else type(exc).__name__

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"<Element {self.index} ({p}): {self.state.value}>"


class Sweep:
    """A sweep's handle (bound by ``--job NAME``): its elements, their states and results.

    ``elements`` (latest attempt of each), ``counts()``, ``failed()``, ``retry()``,
    ``cancel()``, ``wait()``, ``results()``; iterating yields elements as they finish."""

    def __init__(self, sweep_id: str, backend: Backend | None = None,
                 journal: Journal | None = None):
        self.journal = journal or (backend.journal if backend else default_journal())
        rec = self.journal.get_sweep(sweep_id)
        if rec is None:
            raise ClusterError(f"no sweep {sweep_id!r} in the journal")
        self.id: str = rec["id"]
        self.record = rec
        self._backend = backend
        self._params: list[dict[str, Any]] | None = None
        self.namespace: tuple[Any, Any] = (None, None)
        self.has_result = False       # the cell ends with an expression (known when submitted)
        self._jobs: dict[str, Job] = {}
        self._followed = False        # the monitor follows the unfinished elements

    # -- identity ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.record["size"])

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            first = self.journal.get(self.journal.sweep_elements(self.id)[0][2])
            assert first is not None
            self._backend = backend_for_record(first)
        return self._backend

    @property
    def params(self) -> list[dict[str, Any]]:
        """Every element's parameters (verified with the per-user secret, then unpickled)."""
        if self._params is None:
            data = bytes(self.record["params"])
            check(_params_mac(self.backend.key, self.id, data), self.record["params_mac"],
                  f"parameters of sweep {self.id[:8]}")
            self._params = pickle.loads(data)
        return self._params

    @property
    def array_ids(self) -> list[str]:
        """The scheduler's id of each array this sweep submitted (first, then retries)."""
        out: dict[str, None] = {}
        for _, _, job_id in self.journal.sweep_elements(self.id):
            rec = self.journal.get(job_id)
            if rec is not None and rec.native_id:
                out[self.backend.scheduler.array_of(rec.native_id)] = None
        return list(out)

    # -- elements ---------------------------------------------------------------------------
    @property
    def elements(self) -> list[Element]:
        latest: dict[int, str] = {}
        for idx, _, job_id in self.journal.sweep_elements(self.id):
            latest[idx] = job_id
        params = self.params
        out = []
        for idx in sorted(latest):
            job = self._jobs.get(latest[idx])
            if job is None:
                rec = self.journal.get(latest[idx])
                assert rec is not None
                job = self._jobs[rec.id] = Job(rec, self.backend)
            out.append(Element(self, idx, params[idx], job))
        return out

    def counts(self) -> Counts:
        """Elements by state (their latest attempts): one journal query. Unfinished elements
        are followed by the monitor from the first call on."""
        states = self.journal.sweep_states(self.id)
        if not self._followed and any(not s.final for s in states):
            self._track()
        return count(s for s, n in states.items() for _ in range(n))

    def progress(self) -> str:
        return progress_line(self.counts(), time.time() - float(self.record["created"]))

    def failed(self) -> list[Element]:
        """Elements that ended without completing (raised, killed, timed out, lost)."""
        return [e for e in self.elements if e.done and not e.ok]

    def done(self) -> bool:
        return all(e.done for e in self.elements)

    def _track(self) -> list[Element]:
        self._followed = True
        els = self.elements
        active = [e.job.record for e in els if not e.done]
        for rec in active:
            self.backend.monitor.track(rec)
        return els

    def wait(self, timeout: float | None = None, on_tick: Any = None) -> Counts:
        """Block until every element is final (or ``timeout`` passes); return the counts."""
        deadline = None if timeout is None else time.time() + timeout
        els = self._track()
        for e in els:
            self.backend.monitor.waiting(e.job.id, True)
        try:
            while True:
                c = self.counts()
                if on_tick is not None:
                    on_tick(c)
                if c.finished == c.total or (deadline is not None and time.time() > deadline):
                    return c
                time.sleep(0.2)
        finally:
            for e in els:
                self.backend.monitor.waiting(e.job.id, False)

    def __iter__(self) -> Iterator[Element]:
        """The elements as they finish (those already finished first)."""
        seen: set[int] = set()
        self._track()
        while True:
            els = self.elements
            for e in els:
                if e.done and e.index not in seen:
                    seen.add(e.index)
                    yield e
            if len(seen) == len(els):
                return
            time.sleep(0.2)

    def __len__(self) -> int:
        return self.size

    # -- results ----------------------------------------------------------------------------
    def results(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Each name the cell binds, over the finished elements: a DataFrame for scalars when
        pandas is importable, else a dict keyed by the parameter tuple."""
        names = list(names if names is not None else self.record["outputs"])
        els = self.elements
        values: list[dict[str, Any] | None] = []
        for e in els:
            res = self._load(e) if e.ok else None
            values.append(dict(res.values) if res is not None else None)
        return gather([e.params for e in els], values, names)

    def values(self) -> Any:
        """The cell's value over the completed elements (same shapes as :meth:`results`)."""
        els = self.elements
        vals: list[dict[str, Any] | None] = []
        for e in els:
            res = self._load(e) if e.ok else None
            vals.append({"value": res.value} if res is not None and res.has_value else None)
        return gather([e.params for e in els], vals, ["value"]).get("value")

    def _load(self, e: Element) -> Any:
        try:
            return e.job.load(*self.namespace)
        except IntegrityError:
            raise
        except ClusterError:
            return None

    def summary(self) -> str:
        c = self.counts()
        lines = [f"sweep {self.id[:8]} ({self.name}): {c.done} of {c.total} completed"
                 + (f", {c.failed} failed" if c.failed else "")
                 + (f", {c.running + c.pending} not finished" if c.running + c.pending else "")]
        for e in self.failed()[:10]:
            p = ", ".join(f"{k}={v!r}" for k, v in e.params.items())
            why = e.job.record.reason
            if e.state is JobState.FAILED:
                try:
                    why = e.first_error_line() or why
                except Exception:
                    pass
            lines.append(f"  element {e.index} ({p}): {e.state.value}: {why[:160]}")
        if len(self.failed()) > 10:
            lines.append(f"  … and {len(self.failed()) - 10} more (sw.failed())")
        return "\n".join(lines)

    # -- actions ----------------------------------------------------------------------------
    def cancel(self) -> Counts:
        """Stop every unfinished element (one scheduler command per array)."""
        from .monitor import CANCEL_REQUESTED

        els = [e for e in self.elements if not e.done]
        arrays: dict[str, None] = {}
        for e in els:
            rec = e.job.record
            self.journal.update(rec.id, reason=CANCEL_REQUESTED)
            self.backend.monitor.track(rec)
            self.backend.monitor.cancel_requested(rec.id)
            if rec.native_id:
                arrays[self._array_of(rec.native_id)] = None
        if arrays:
            self.backend.scheduler.cancel(list(arrays))
        return self.wait(60)

    def _array_of(self, native_id: str) -> str:
        return self.backend.scheduler.array_of(native_id)

    def retry(self, max_running: int | None = None) -> "Sweep":
        """Run the elements that did not complete again, as a new array of this sweep; the
        finished results are kept. Returns this sweep."""
        todo = self.failed()
        if not todo:
            raise ClusterError(f"sweep {self.id[:8]}: nothing to retry (no element failed)")
        backend = self.backend
        key = backend.key
        prefix = uuid.uuid4().hex[:24]
        attempt = 1 + max(a for _, a, _ in self.journal.sweep_elements(self.id))
        docs = {}
        for e in todo:
            p = backend.paths(e.job.record)
            doc = verify_document(key, "manifest", backend.transport.read(p.manifest),
                                  backend.transport.read(p.manifest_sig))
            if doc.get("job_id") != e.job.id:
                raise IntegrityError("manifest belongs to another job")
            eid = element_id(prefix, e.index)
            docs[e.index] = rebind(dict(doc, job_id=eid), key, eid)
        first = todo[0].job.record
        sub = Submission(source=first.cell, has_result=False, packed=None,  # type: ignore
                         name=first.name, resources=_resources(first), outputs=first.outputs,
                         kernel_id=first.kernel_id, notebook=first.notebook)
        self._submit_array(prefix, docs, attempt, max_running or default_max_running(), sub)
        return self

    def _submit_array(self, prefix: str, docs: dict[int, dict], attempt: int,
                      max_running: int, sub: Submission) -> None:
        backend = self.backend
        t = backend.transport
        key = backend.key
        indices = sorted(docs)
        files: dict[str, tuple[bytes, int]] = {}
        recs = []
        now = time.time()
        for i in indices:
            eid = element_id(prefix, i)
            paths = JobPaths(backend.root, eid)
            t.makedirs(paths.dir, 0o700)
            data, sig = sign_document(key, "manifest", docs[i], indent=None)
            files[paths.manifest] = (data, 0o600)
            files[paths.manifest_sig] = (sig, 0o600)
            recs.append(JobRecord(id=eid, name=f"{sub.name}[{i}]", profile=backend.name,
                                  scheduler=backend.scheduler.name, state=JobState.PENDING,
                                  submitted=now, cell=sub.source, job_dir=paths.dir,
                                  kernel_id=sub.kernel_id, notebook=sub.notebook,
                                  outputs=list(sub.outputs),
                                  options=backend.profile.default_resources.merged(
                                      sub.resources).to_dict()))
        spec = dataclasses.replace(backend.spec(prefix, sub), array_prefix=prefix)
        t.makedirs(spec.paths.dir, 0o700)
        files[spec.paths.script] = (backend.scheduler.render(spec).encode(), 0o700)
        t.write_many(files)
        self.journal.add_jobs(recs, self.id, attempt, indices)
        try:
            array_id = backend.scheduler.submit_array(spec, indices, max_running)
        except Exception as e:
            for r in recs:
                self.journal.update(r.id, state=JobState.FAILED, finished=time.time(),
                                    reason=f"submission failed: {e}")
            raise
        backend.monitor.count(submissions=1)
        natives = {r.id: backend.scheduler.element_native_id(array_id, i)
                   for r, i in zip(recs, indices, strict=True)}
        self.journal.set_native_ids(natives)
        for r in recs:
            r.native_id = natives[r.id]
            backend.monitor.track(r)

    def __repr__(self) -> str:
        try:
            return f"<Sweep {self.id[:8]} {self.name!r}: {self.progress()}>"
        except Exception:
            return f"<Sweep {self.id[:8]} {self.name!r}>"


def _resources(rec: JobRecord) -> Any:
    from .resources import Resources

    try:
        return Resources.parse(dict(rec.options))
    except Exception:
        return Resources()


def find(ref: str, journal: Journal | None = None) -> Sweep | None:
    """The sweep whose id starts with ``ref``, or None."""
    j = journal or default_journal()
    rec = j.get_sweep(ref) if len(ref) >= 4 else None
    return Sweep(rec["id"], journal=j) if rec else None


def element_dir(root: str, prefix: str, index: int) -> str:
    return posixpath.join(root, "jobs", element_id(prefix, index))
