"""A matplotlib figure as the kernel's inline backend shows it: its mime bundle, in the kernel's
figure formats. No matplotlib import here (the figure brings its own canvas), so the display
side can use it without importing the backend; runner-side, standard library only.
"""

from __future__ import annotations

import base64
import io
import struct
from typing import Any

from . import context

_MIME = {"png": "image/png", "retina": "image/png", "png2x": "image/png", "jpg": "image/jpeg",
         "jpeg": "image/jpeg", "svg": "image/svg+xml", "pdf": "application/pdf"}


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">ii", data[16:24])
    return width, height


def render(fig: Any, fmt: str, kwargs: dict) -> tuple[Any, dict] | None:
    """One figure in one format, as IPython's ``print_figure`` makes it (None if empty)."""
    if not fig.axes and not fig.lines:
        return None
    retina = fmt in ("retina", "png2x")
    kw = {"format": "png" if retina else ("jpg" if fmt == "jpeg" else fmt),
          "facecolor": fig.get_facecolor(), "edgecolor": fig.get_edgecolor(),
          "dpi": fig.dpi * (2 if retina else 1), "bbox_inches": "tight", **kwargs}
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, **kw)
    data = buf.getvalue()
    if fmt == "svg":
        return data.decode("utf-8"), {}
    meta = {}
    if retina:
        w, h = _png_size(data)
        meta = {"width": w // 2, "height": h // 2}
    return base64.b64encode(data).decode("ascii"), meta


def figure_bundle(fig: Any) -> tuple[dict, dict]:
    """A figure's mime bundle and metadata, in the kernel's figure formats."""
    settings = context.inline_settings()
    bundle: dict[str, Any] = {"text/plain": repr(fig)}
    metadata: dict[str, Any] = {}
    for fmt in settings["figure_formats"]:
        mime = _MIME.get(fmt)
        if mime is None or mime in bundle:
            continue
        got = render(fig, fmt, settings["print_figure_kwargs"])
        if got is not None:
            bundle[mime] = got[0]
            if got[1]:
                metadata[mime] = got[1]
    return bundle, metadata
