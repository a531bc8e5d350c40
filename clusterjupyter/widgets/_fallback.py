"""What a widget display of ours shows once its frontend no longer has the widget.

A frontend renders ``application/vnd.jupyter.widget-view+json`` whenever a display carries it:
JupyterLab's widget renderer shows "Error displaying widget: model not found" (a reopened
notebook) or greyed views with broken-link icons (a restarted kernel), and never falls back to
another type of the same bundle. So every widget display of this package also carries a
``text/html`` alternative and the output metadata :data:`MARK`; the JupyterLab extension
(``labextension/src/fallback.ts``) replaces the output by that alternative when the kernel
restarts, stops or changes, and when a reopened notebook's widget cannot be found. Frontends
without the extension show what ipywidgets shows; a saved notebook keeps the alternative.
"""

from __future__ import annotations

from typing import Any

VIEW_MIME = "application/vnd.jupyter.widget-view+json"
#: output metadata: "this widget display has a static text/html alternative"
MARK = {"clusterjupyter": {"fallback": "text/html"}}


def widget_bundle(model_id: str, text: str, html: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` of a display showing widget ``model_id``, with ``html`` (and
    ``text``) for a frontend that has lost the widget."""
    data = {"text/plain": text, "text/html": html,
            VIEW_MIME: {"version_major": 2, "version_minor": 0, "model_id": model_id}}
    return data, MARK
