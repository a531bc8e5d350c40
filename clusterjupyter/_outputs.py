"""What a job sends back, where the job runs: which names the cell bound, mutated or deleted
(a pure decision over the namespace), each value pickled into a signed blob, then the signed
``result.json`` that lists them.

Standard library only (imported by :mod:`.runner`); the kernel reads what this writes through
:mod:`.payload`.
"""

from __future__ import annotations

import os
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _display, bundle, serialize
from .jobdir import JobPaths, blob_mac, sign_document, write_atomic

#: the names under which the cell's value and its exception travel among the outputs
RESULT_KEY = "__result__"
EXCEPTION_KEY = "__exception__"
FIGURES_KEY = "__figures__"   # figures the job left open, for the kernel's pyplot
#: names in the job's namespace that are the runner's, never the cell's
RUNNER_NAMES = frozenset({"__builtins__", "__name__", "__doc__", "__package__", "__loader__",
                          "__spec__", "get_ipython", "_exit_code"})

Digest = Callable[[Any], "str | None"]


@dataclass
class Changes:
    """What the cell did to its namespace: values to send back (rebound, new or mutated, in
    namespace order), the inputs among them mutated in place, and the names deleted."""

    values: dict[str, Any] = field(default_factory=dict)
    mutated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def input_digests(inputs: dict[str, Any], digest: Digest) -> dict[str, str | None]:
    """The state of every input that can be mutated in place, before the cell runs."""
    return {name: digest(value) for name, value in inputs.items()
            if not isinstance(value, (types.FunctionType, type, types.ModuleType))}


def changes(ns: dict[str, Any], inputs: dict[str, Any], before: dict[str, str | None],
            digest: Digest, injected: dict[str, Any] | None = None,
            declared_deleted: list[str] | tuple[str, ...] = ()) -> Changes:
    """Compare the namespace after the cell with the inputs it started from.

    ``before`` holds :func:`input_digests`; ``injected`` what an IPython shell put in the
    namespace to run a magic (not the cell's); ``declared_deleted`` the names the kernel saw the
    cell delete (``del x`` of a name the job never received)."""
    injected = injected or {}
    out = Changes()
    for name, value in ns.items():
        if name in RUNNER_NAMES or (name.startswith("__") and name.endswith("__")):
            continue
        if name in injected and injected[name] is value:
            continue
        if name not in inputs or inputs[name] is not value:
            out.values[name] = value
    for name, was in before.items():
        if name in ns and name not in out.values and ns[name] is inputs[name]:
            if was is None or digest(ns[name]) != was:
                out.values[name] = ns[name]
                out.mutated.append(name)
    out.deleted = [n for n in inputs if n not in ns]
    out.deleted += [n for n in declared_deleted if n not in ns and n not in out.deleted]
    return out


def cell_frames(tb: types.TracebackType | None, filename: str) -> list[dict[str, Any]]:
    """The traceback's frames from the cell's own on (the runner's are left out): file, line,
    function name and argument names, for the kernel to show as its own traceback."""
    frames: list[dict[str, Any]] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if frames or code.co_filename == filename:
            nargs = code.co_argcount + code.co_kwonlyargcount
            frames.append({
                "filename": code.co_filename, "name": code.co_name, "lineno": tb.tb_lineno,
                "args": list(code.co_varnames[:nargs]),
                "varargs": code.co_varnames[nargs] if code.co_flags & 0x04 else None,
                "varkw": code.co_varnames[nargs + bool(code.co_flags & 0x04)]
                if code.co_flags & 0x08 else None,
                "posonly": code.co_posonlyargcount,
            })
        tb = tb.tb_next
    return frames


def exception_info(exc: BaseException, filename: str) -> dict[str, Any]:
    """The cell's exception as text and frames (always readable, even when it cannot pickle)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
        "frames": cell_frames(exc.__traceback__, filename),
    }


def exception_payload(exc: BaseException) -> Any:
    """The exception with its traceback in a form that pickles (tblib, when installed)."""
    tb: Any = None
    try:
        from tblib import Traceback
        # drop the runner's own frame: the user sees the cell's frames only
        raw = exc.__traceback__
        if raw is not None and raw.tb_next is not None:
            raw = raw.tb_next
        tb = Traceback(raw).to_dict() if raw is not None else None
    except Exception:
        tb = None
    exc.__traceback__ = None
    return {"exception": exc, "traceback": tb}


def output_blobs(items: dict[str, Any], mutated: list[str], inputs: dict[str, Any],
                 opts: serialize.DumpOptions, entries: dict[str, Any],
                 unpicklable: dict[str, str],
                 nested: bundle.Refs | None = None) -> dict[str, serialize.Blob]:
    """The values to send back, pickled: modules by name (into ``entries``), notebook
    classes on their own, everything else together (:mod:`.bundle`). ``items`` is consumed.
    ``nested``: the objects that were inside the inputs (:func:`bundle.nested_refs`)."""
    outputs: dict[str, serialize.Blob] = {}
    for name, value in list(items.items()):
        if isinstance(value, types.ModuleType):
            entries[name] = {"module": value.__name__}
            del items[name]
        elif isinstance(value, type) and opts.class_ref is not None \
                and opts.class_ref(value) == name:
            # a notebook class travels on its own: values refer to it by name
            try:
                outputs[name] = serialize.dump(value, opts)
            except Exception as e:
                unpicklable[name] = f"{type(e).__name__}: {e}"
            del items[name]
    # inputs travel back as references to the kernel's objects (a mutated input's new
    # state by value, to be written into the kernel's object); a module's own objects as
    # references to the kernel's module
    refs = bundle.refs_for(inputs)
    for key, pid in bundle.module_refs(items).items():
        refs.setdefault(key, pid)
    # an object that was inside an input: its path and new state, for the kernel's object
    for key, pid in (nested or {}).items():
        refs.setdefault(key, pid)
    arrays = bundle.arrays_among(*inputs.values(), *items.values())
    grouped = {n: bundle.Root(v) if n in mutated else v for n, v in items.items()}
    groups, bad = bundle.dump_groups(grouped, opts, refs, arrays)
    unpicklable.update(bad)
    outputs.update(groups)
    return outputs


def _write_blobs(paths: JobPaths, key: bytes, outputs: dict[str, serialize.Blob],
                 entries: dict[str, Any]) -> None:
    """Each blob to ``outputs/N.pkl`` (through a rename), listed in ``entries`` with its MAC."""
    os.makedirs(paths.outputs, mode=0o700, exist_ok=True)
    for index, (name, blob) in enumerate(outputs.items()):
        path = paths.output(index)
        with open(path + ".tmp", "wb") as f:
            blob.write_to(f)
        os.replace(path + ".tmp", path)
        entries[name] = {"file": os.path.basename(path), "sha256": blob.sha256,
                         "size": blob.size, "mac": blob_mac(key, paths.job_id, blob.sha256)}
        if name in bundle.GROUPS:
            entries[name]["names"] = getattr(blob, "names", [])


def write_result(paths: JobPaths, key: bytes, opts: serialize.DumpOptions,
                 inputs: dict[str, Any], done: Changes, last: Any, has_last: bool,
                 exc: BaseException | None, filename: str, extra: dict[str, Any],
                 figures: list[Any] | None = None, nested: bundle.Refs | None = None) -> None:
    """Pickle and sign what the cell left (``done``, its value, its exception, the ``figures``
    it left open), then write the signed ``result.json``; ``extra`` adds the job's other
    findings (settings, kernel magics, files) to the document."""
    entries: dict[str, Any] = {}
    unpicklable: dict[str, str] = {}
    exc_info = exception_info(exc, filename) if exc is not None else None
    items = dict(done.values)
    if has_last:
        items[RESULT_KEY] = last
    if figures:
        items[FIGURES_KEY] = figures
    outputs = output_blobs(items, done.mutated, inputs, opts, entries, unpicklable, nested)
    if exc is not None:
        try:
            outputs[EXCEPTION_KEY] = serialize.dump(exception_payload(exc), opts)
        except Exception as e:
            unpicklable[EXCEPTION_KEY] = f"{type(e).__name__}: {e}"
    _write_blobs(paths, key, outputs, entries)
    doc: dict[str, Any] = {"job_id": paths.job_id, "values": entries,
                           "unpicklable": unpicklable, "mutated": done.mutated,
                           "deleted": done.deleted, "order": list(done.values), **extra}
    if has_last and RESULT_KEY in unpicklable:
        doc["result_bundle"] = _display.mimebundle(last)[0]
    if exc_info is not None:
        doc["exception"] = exc_info
    data, sig = sign_document(key, "result", doc)
    write_atomic(paths.result, data)
    write_atomic(paths.result_sig, sig)
