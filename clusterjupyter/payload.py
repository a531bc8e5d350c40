"""Kernel side of the payload: inputs into signed blobs, results back into values.

:func:`pack_inputs` pickles every captured value *before* anything is submitted, so a value that
cannot travel is named in a :class:`~clusterjupyter.errors.CaptureError` and nothing is lost.
:func:`load_result` verifies the runner's signed result and every returned blob before
unpickling it.
"""

from __future__ import annotations

import pickle
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from . import bundle, serialize
from .capture import Captured
from .errors import CaptureError, RemoteError, RemoteTraceback
from .inplace import unchanged, update_in_place
from .jobdir import IntegrityError, JobPaths, blob_mac, check, verify_document
from ._outputs import EXCEPTION_KEY, FIGURES_KEY, RESULT_KEY
from .tracebacks import rebuild_traceback

Opener = Callable[[str], Any]
#: the largest signed document read before its signature is checked
MAX_DOCUMENT = 256 << 20


@dataclass
class Packed:
    blobs: dict[str, serialize.Blob]
    modules: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)   # optional inputs left behind
    #: more of the manifest: the kernel's settings ("context"), the cell's file name
    extra: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)           # the inputs sent, by name

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs.values())


def pack_inputs(captured: Captured, namespace: dict, main: types.ModuleType) -> Packed:
    """Pickle the inputs together (:mod:`.bundle`): shared objects stay shared. Large arrays
    and the notebook classes the values use travel as blobs of their own (an unchanged one is
    not sent again)."""
    referenced: set[str] = set()
    plain_ref = serialize.main_class_ref(namespace)

    def class_ref(cls: type) -> str | None:
        name = plain_ref(cls)
        if name is not None:
            referenced.add(name)
        return name

    opts = serialize.DumpOptions(main=main, class_ref=class_ref)
    values = dict(captured.values)
    blobs: dict[str, serialize.Blob] = {}
    problems: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def fail(name: str, why: str) -> None:
        (skipped if name in captured.optional else problems)[name] = why

    def dump_own(todo: list[str]) -> None:
        while todo:
            name = todo.pop(0)
            if name in blobs or name in problems or name in skipped:
                continue
            value = values.get(name, namespace.get(name))
            try:
                blobs[name] = serialize.dump(value, opts)
            except Exception as e:
                fail(name, f"{type(value).__name__} cannot be pickled ({type(e).__name__}: {e})")
                continue
            todo.extend(sorted(referenced - set(blobs)))

    own: dict[int, str] = {}
    for name, value in values.items():
        if (isinstance(value, type) and plain_ref(value) == name) or bundle.separate(value):
            own.setdefault(id(value), name)
    dump_own(list(own.values()))
    refs = bundle.refs_for({n: values[n] for n in own.values() if n in blobs})
    rest = {n: v for n, v in values.items()
            if n not in blobs and n not in problems and n not in skipped}
    arrays = bundle.arrays_among(*values.values())
    groups, bad = bundle.dump_groups(rest, opts, refs, arrays)
    for name, why in bad.items():
        fail(name, why)
    dump_own(sorted(referenced - set(blobs)))
    if problems:
        raise CaptureError(problems)
    blobs.update(groups)
    sent = [n for n in values if n not in problems and n not in skipped]
    return Packed(blobs=blobs, modules=dict(captured.modules), skipped=skipped, names=sent)


@dataclass
class JobResult:
    """What a finished job sent back, verified and unpickled."""

    job_id: str
    values: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    has_value: bool = False
    value_bundle: dict | None = None       # mime bundle when the value itself did not pickle
    exception: BaseException | None = None
    unpicklable: dict[str, str] = field(default_factory=dict)
    unloadable: dict[str, str] = field(default_factory=dict)
    mutated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)     # files sent back (staged mode)
    files_left: dict[str, Any] = field(default_factory=dict)
    kernel_magics: list[list[str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)   # settings the cell changed
    figures: list[Any] = field(default_factory=list)  # left open by the job, now the kernel's
    drew: bool = False                     # the cell used pyplot (the inline backend's flag)

    @property
    def warnings(self) -> dict[str, str]:
        return {**self.unpicklable, **self.unloadable}


def _rebuild_exception(payload: Any, info: dict) -> BaseException:
    exc = payload.get("exception") if isinstance(payload, dict) else None
    if not isinstance(exc, BaseException):
        return RemoteError(info.get("type", "Exception"), info.get("message", ""),
                           info.get("traceback", ""))
    if info.get("frames"):
        return exc.with_traceback(rebuild_traceback(info["frames"]))
    tb_dict = payload.get("traceback")
    if tb_dict:
        try:
            from tblib import Traceback

            # the remote frames become the exception's own traceback: shown like a local one
            return exc.with_traceback(Traceback.from_dict(tb_dict).as_traceback())
        except Exception:
            pass
    text = info.get("traceback", "")
    if text and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def _read_capped(f: Any, limit: int, what: str) -> bytes:
    """All of ``f`` if it holds at most ``limit`` bytes (memory taken as bytes arrive)."""
    pieces, size = [], 0
    while piece := f.read(min(1 << 20, limit + 1 - size)):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            raise IntegrityError(f"{what} is larger than any such file ({limit} bytes); "
                                 "refusing to read it")
    return b"".join(pieces)


def output_names(name: str, entry: dict) -> str:
    """The user's words for a result blob: ``output 'weights'``, ``outputs 'a', 'b'`` (a group
    carries several names; its own name is internal)."""
    names = list(entry.get("names") or []) if name in bundle.GROUPS else [name]
    words = {RESULT_KEY: "the cell's value", EXCEPTION_KEY: "the cell's exception",
             FIGURES_KEY: "the figures left open"}
    shown = [words.get(n, repr(n)) for n in names]
    if not shown:
        return "an output"
    return ("output " if len(shown) == 1 else "outputs ") + ", ".join(shown)


def _read_verified(opener: Opener, path: str, entry: dict, what: str) -> tuple[bytes, list]:
    """A blob's pickle stream and buffers, checked against its signed sha256 and size
    (``what``: :func:`output_names`)."""
    altered = f"{what} {'were' if what.startswith('outputs ') else 'was'} altered"
    with opener(path) as f:
        try:
            return serialize.read_verified(f, entry["sha256"], entry.get("size"))
        except pickle.UnpicklingError as e:
            why = f" ({e})" if str(e) else ""
            raise IntegrityError(f"{altered}{why}; refusing to unpickle it") from None


def load_result(paths: JobPaths, key: bytes, opener: Opener, namespace: dict,  # noqa: C901
                main: types.ModuleType) -> JobResult:
    """Read, verify and unpickle a job's result through ``opener`` (a transport's ``open``)."""
    with opener(paths.result) as f:
        data = _read_capped(f, MAX_DOCUMENT, paths.result)
    with opener(paths.result_sig) as f:
        sig = _read_capped(f, 256, paths.result_sig)
    doc = verify_document(key, "result", data, sig)
    if doc.get("job_id") != paths.job_id:
        raise IntegrityError("result belongs to another job")
    result = JobResult(job_id=paths.job_id, unpicklable=dict(doc.get("unpicklable", {})),
                       mutated=list(doc.get("mutated", [])), deleted=list(doc.get("deleted", [])),
                       value_bundle=doc.get("result_bundle"),
                       files=dict(doc.get("files", {})), files_left=dict(doc.get("files_left", {})),
                       kernel_magics=list(doc.get("kernel_magics", [])),
                       settings=dict(doc.get("settings") or {}), drew=bool(doc.get("drew")))
    entries = doc.get("values", {})
    loaded: dict[str, Any] = {}

    def load(name: str) -> Any:
        """Load one returned value (verified first); classes it references load first."""
        if name in loaded:
            return loaded[name]
        entry = entries[name]
        if "module" in entry:
            value: Any = __import__(entry["module"], fromlist=["_"])
        elif name in bundle.GROUPS:
            data, buffers = _read_verified(opener, paths.outputs + "/" + entry["file"], entry,
                                           output_names(name, entry))
            value = bundle.load_group(data, buffers, main, resolve, kernel_object, kernel_nested)
        else:
            check(blob_mac(key, paths.job_id, entry["sha256"]), entry["mac"],
                  output_names(name, entry))
            with opener(paths.outputs + "/" + entry["file"]) as f:
                try:
                    value = serialize.load(f, main, resolve, expect_sha256=entry["sha256"],
                                           expect_size=entry.get("size"))
                except serialize.BlobMismatch as e:
                    raise IntegrityError(f"{output_names(name, entry)} was altered ({e}); "
                                         "refusing to unpickle it") from None
        loaded[name] = value
        return value

    def kernel_object(name: str) -> Any:
        # the cell's input itself: the kernel's own object (its new state is written into it)
        try:
            return namespace[name]
        except KeyError:
            raise LookupError(f"{name!r} (an input of the job) is no longer in this "
                              "kernel") from None

    def kernel_nested(name: str, path: Any, kind: str, state: Any) -> Any:
        # an object inside an input: the kernel's own object at that path, given the job's
        # state, so that every other holder of it sees the change (else the job's copy)
        try:
            target = bundle.follow(namespace[name], path)
        except Exception:
            return state
        if bundle.typename(target) != kind:
            return state
        if unchanged(target, state) or update_in_place(target, state):
            return target
        return state

    def resolve(name: str) -> Any:
        # a class the cell defined comes with the result; otherwise it is the kernel's own
        if name in entries:
            return load(name)
        try:
            return namespace[name]
        except KeyError:
            raise LookupError(f"class {name!r} is not defined in this kernel") from None

    # verify every signature before unpickling anything
    for name, entry in entries.items():
        if "module" not in entry:
            check(blob_mac(key, paths.job_id, entry["sha256"]), entry["mac"],
                  output_names(name, entry))
    for entry_name, entry in entries.items():
        try:
            got = load(entry_name)
        except IntegrityError:
            raise
        except Exception as e:
            for name in entry.get("names", [entry_name]):
                result.unloadable[name] = f"cannot be loaded here ({type(e).__name__}: {e})"
            continue
        for name, value in (got.items() if entry_name in bundle.GROUPS
                            else [(entry_name, got)]):
            if name == RESULT_KEY:
                result.value, result.has_value = value, True
            elif name == EXCEPTION_KEY:
                result.exception = _rebuild_exception(value, doc.get("exception", {}))
            elif name == FIGURES_KEY:
                result.figures = list(value)
            else:
                result.values[name] = value
    order = {name: i for i, name in enumerate(doc.get("order", []))}
    result.values = dict(sorted(result.values.items(), key=lambda kv: order.get(kv[0], 1 << 30)))
    if "exception" in doc and result.exception is None:
        info = doc["exception"]
        result.exception = RemoteError(info.get("type", "Exception"), info.get("message", ""),
                                       info.get("traceback", ""))
    for bucket in (result.unpicklable, result.unloadable):
        bucket.pop(EXCEPTION_KEY, None)  # replaced by a RemoteError above
        if FIGURES_KEY in bucket:
            bucket["the figures left open in the job"] = bucket.pop(FIGURES_KEY)
    if RESULT_KEY in result.unpicklable or RESULT_KEY in result.unloadable:
        result.unpicklable.pop(RESULT_KEY, None)
        result.unloadable.pop(RESULT_KEY, None)
        if result.value_bundle is None:
            result.value_bundle = {"text/plain": "(the cell's value could not be sent back)"}
    return result


def manifest_doc(job_id: str, name: str, source: str, has_result: bool, packed: Packed,
                 key: bytes, deleted: list[str], outputs: list[str]) -> dict[str, Any]:
    return {
        "version": 1,
        "job_id": job_id,
        "name": name,
        "cell": source,
        "has_result": has_result,
        "inputs": {n: {"sha256": b.sha256, "size": b.size,
                       "mac": blob_mac(key, job_id, b.sha256)} for n, b in packed.blobs.items()},
        "modules": packed.modules,
        "deleted": deleted,
        "outputs": outputs,
        **packed.extra,
    }
