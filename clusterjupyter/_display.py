"""Rich output on the cluster side: a ``display()`` that writes mime bundles to the job directory.

The runner points :data:`sink` at ``displays.jsonl``; every call appends one JSON line that the
kernel re-displays. Formatting follows IPython's repr protocol (``_repr_mimebundle_``,
``_repr_html_``, ``_repr_png_`` ...) without importing IPython, which would cost more than the
whole trivial job.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from typing import Any, TextIO

sink: TextIO | None = None
_lock = threading.Lock()

_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)


def _jsonable(mime: str, value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if mime == "application/json" or isinstance(value, (str, list, dict)):
        return value
    return str(value)


def mimebundle(obj: Any) -> tuple[dict, dict]:
    """The (data, metadata) mime bundle of ``obj``, as IPython's formatter would build it."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method) and not isinstance(obj, type):
        try:
            got = method(include=None, exclude=None)
        except Exception:
            got = None
        if isinstance(got, tuple):
            got, md = got
            metadata.update(md or {})
        if isinstance(got, dict):
            data.update(got)
    for mime, name in _REPRS:
        if mime in data:
            continue
        method = getattr(obj, name, None)
        if callable(method) and not isinstance(obj, type):
            try:
                value = method()
            except Exception:
                value = None
            if isinstance(value, tuple) and len(value) == 2:
                value, md = value
                metadata[mime] = md
            if value is not None:
                data[mime] = value
    data.setdefault("text/plain", repr(obj))
    return {k: _jsonable(k, v) for k, v in data.items()}, metadata


def _sizes() -> dict[str, int]:
    at = {}
    for name, stream, fd in (("stdout", sys.stdout, 1), ("stderr", sys.stderr, 2)):
        try:
            stream.flush()
            at[name] = os.fstat(fd).st_size
        except (OSError, ValueError):
            pass
    return at


def publish(data: dict, metadata: dict | None = None) -> None:
    """Append one display to the sink, with how much stdout and stderr the job had written
    by then (so the kernel shows them in the job's order)."""
    with _lock:
        if sink is None:
            print(data.get("text/plain", ""))
            return
        line = json.dumps({"data": data, "metadata": metadata or {}, "at": _sizes()})
        sink.write(line + "\n")
        sink.flush()


_last_stream: list[str] = [""]


def stream_written(name: str) -> None:
    """Called before the job writes to stdout or stderr: when it switches from one to the
    other, a mark records how much each had, so the kernel interleaves them in order."""
    if _last_stream[0] == name:
        return
    previous, _last_stream[0] = _last_stream[0], name
    if previous and sink is not None:
        with _lock:
            sink.write(json.dumps({"at": _sizes()}) + "\n")
            sink.flush()


class Stream:
    """A text stream of the job (stdout or stderr) that notes which one is written to."""

    def __init__(self, name: str, raw: Any):
        self._name = name
        self._raw = raw

    def write(self, text: str) -> int:
        stream_written(self._name)
        return self._raw.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


_formatter: list[Any] = []


def _format(obj: Any) -> tuple[dict, dict]:
    """The bundle the kernel would show: IPython's own formatter where IPython is installed
    (pretty text, the enabled mime types), a figure as the inline backend shows it."""
    mpl_figure = sys.modules.get("matplotlib.figure")
    if mpl_figure is not None and isinstance(obj, mpl_figure.Figure):
        from ._figures import figure_bundle

        return figure_bundle(obj)
    if not _formatter:
        try:
            from IPython.core.formatters import DisplayFormatter

            _formatter.append(DisplayFormatter())
        except Exception:
            _formatter.append(None)
    if _formatter[0] is None:
        return mimebundle(obj)
    data, md = _formatter[0].format(obj)
    return {k: _jsonable(k, v) for k, v in data.items()}, md


def display(*objs: Any, raw: bool = False, metadata: dict | None = None, **_: Any) -> None:
    """Display objects in the notebook cell that submitted this job."""
    for obj in objs:
        if raw and isinstance(obj, dict):
            publish(obj, metadata)
            continue
        data, md = _format(obj)
        if data:    # an object that displayed itself (``_ipython_display_``) has no bundle
            publish(data, {**md, **(metadata or {})})
