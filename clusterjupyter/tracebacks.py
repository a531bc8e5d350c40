"""A traceback made of a job's frames, so the kernel shows the remote cell's frames as its own.

Standard library only: the result loader (:mod:`.payload`) and the kernel side
(:mod:`.kernelcell`) both use it.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable


class _Marker(Exception):
    pass


def rebuild_traceback(frames: list[dict[str, Any]]) -> types.TracebackType | None:
    """A traceback made of the job's frames (file, line, function and its arguments), so the
    kernel shows ``Cell In[3], line 2, in f(x)`` with the lines of its own cells."""
    head: types.TracebackType | None = None
    last: types.TracebackType | None = None
    for frame in frames:
        try:
            fn, nargs = _stub(frame)
        except Exception:
            continue
        try:
            fn(*([None] * nargs))
        except _Marker:
            tb = sys.exc_info()[2]
            tb = tb.tb_next if tb is not None else None
        if tb is None:
            continue
        if last is None:
            head = tb
        else:
            last.tb_next = tb
        last = tb
    return head


def _stub(frame: dict[str, Any]) -> tuple[Callable[..., Any], int]:
    args = [a for a in frame.get("args", []) if a.isidentifier()]
    params = list(args)
    if frame.get("varargs"):
        params.append("*" + frame["varargs"])
    if frame.get("varkw"):
        params.append("**" + frame["varkw"])
    lineno = max(int(frame["lineno"]), 1)
    src = "\n" * (lineno - 1) + f"def _cj_stub({', '.join(params)}): raise _cj_marker\n"
    module = compile(src, frame["filename"], "exec")
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType))
    code = code.replace(co_name=frame["name"], co_qualname=frame["name"])  # type: ignore[call-arg]
    globs = {"_cj_marker": _Marker(), "__name__": "__main__"}
    return types.FunctionType(code, globs), len(args)
