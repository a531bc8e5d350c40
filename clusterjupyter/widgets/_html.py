"""HTML fragments for the widgets: badges, rows, log views, messages.

Every value that comes from a job, a profile, a scheduler or a log goes through :func:`esc`.
Colours are inline (no custom CSS or JavaScript); neutral colours use JupyterLab's theme
variables with fallbacks, so the fragments read well in light and dark themes and in any
frontend that renders ipywidgets 8.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable

from ..journal import JobRecord
from ..states import JobState
from ..text import short_duration as fmt_seconds

STATE_COLOURS = {
    JobState.PENDING: "#b26a00",
    JobState.RUNNING: "#1565c0",
    JobState.COMPLETED: "#2e7d32",
    JobState.FAILED: "#c62828",
    JobState.CANCELLED: "#616161",
    JobState.TIMEOUT: "#e65100",
    JobState.OUT_OF_MEMORY: "#6a1b9a",
    JobState.LOST: "#37474f",
}
BORDER = "var(--jp-border-color2, #ccc)"
MUTED = "var(--jp-ui-font-color2, #666)"
ERROR = "var(--jp-error-color1, #c62828)"
OK = "var(--jp-success-color1, #2e7d32)"


def esc(value: object) -> str:
    """``value`` as text, HTML-escaped (quotes too: it may end up in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def elapsed_text(rec: JobRecord, now: float | None = None) -> str:
    """Running (or ran) time; time in the queue while pending."""
    if rec.started is None:
        if rec.state is JobState.PENDING:
            return "queued " + fmt_seconds((now or time.time()) - rec.submitted)
        return "-"
    return fmt_seconds(rec.elapsed, precise=rec.state.final)


def badge(state: JobState | str) -> str:
    state = JobState.parse(state) if isinstance(state, str) else state
    colour = STATE_COLOURS.get(state, "#555")
    return (f'<span class="cj-badge cj-{esc(state.value)}" style="background:{colour};'
            'color:#fff;border-radius:3px;padding:0 .45em;font-size:90%;white-space:nowrap">'
            f'{esc(state.value.replace("_", " "))}</span>')


def grid(cells: Iterable[str], columns: str = "", header: bool = False, cls: str = "",
         cell_classes: Iterable[str] = ()) -> str:
    """One row of a table as a CSS grid; ``cells`` are HTML already escaped. ``columns``: the
    grid's columns, or "" when the stylesheet of class ``cls`` sets them (``cell_classes``: a
    class for each cell, so that a narrow container can hide some)."""
    style = ("white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0"
             + (";font-weight:600" if header else ""))
    classes = [f' class="{esc(c)}"' for c in cell_classes]
    inner = "".join(f'<div{classes[i] if i < len(classes) else ""} style="{style}">{c}</div>'
                    for i, c in enumerate(cells))
    template = f"grid-template-columns:{columns};" if columns else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return (f'<div{klass} style="display:grid;{template}gap:0 .8em;'
            f'align-items:center;line-height:1.6">{inner}</div>')


def titled(text: str, title: str | None = None, code: bool = False) -> str:
    """``text`` escaped, with a tooltip (``title``) holding the full value."""
    tag = "code" if code else "span"
    tip = f' title="{esc(title)}"' if title else ""
    return f"<{tag}{tip}>{esc(text)}</{tag}>"


def log_view(text: str, empty: str = "(nothing yet)", max_height: str = "20em") -> str:
    """A scrolling log; ``column-reverse`` keeps it scrolled to the newest line without JS."""
    body = esc(text) if text else f'<span style="color:{MUTED}">{esc(empty)}</span>'
    return (f'<div style="max-height:{max_height};overflow:auto;display:flex;'
            f'flex-direction:column-reverse;border:1px solid {BORDER};border-radius:2px">'
            '<pre style="margin:0;padding:4px 6px;white-space:pre-wrap;word-break:break-all;'
            f'font-size:90%">{body}</pre></div>')


def message(text: str, kind: str = "info") -> str:
    """A one-line message: ``info``, ``ok`` or ``error``; empty text gives an empty string."""
    if not text:
        return ""
    colour = {"error": ERROR, "ok": OK}.get(kind, MUTED)
    return f'<span style="color:{colour};white-space:pre-wrap">{esc(text)}</span>'


def error_view(head: str, err: dict, open_: bool = True) -> str:
    """Why a job failed: the headline, then the remote traceback and the logs' last lines in a
    ``<details>`` (open by default), each scrolling on its own."""
    parts = []
    if err.get("traceback"):
        parts.append(("remote traceback", err["traceback"]))
    if err.get("log_tail"):
        parts.append(("last lines of the logs", err["log_tail"]))
    facts = [f"{k.replace('_', ' ')}: {err[k]}" for k in ("exit_code", "signal", "limit")
             if err.get(k) not in (None, "")]
    body = "".join(
        f'<div style="color:{MUTED};font-size:85%;margin-top:4px">{esc(title)}</div>'
        f'<pre style="margin:0;padding:4px 6px;max-height:16em;overflow:auto;white-space:pre-wrap;'
        f'word-break:break-word;font-size:85%;border:1px solid {BORDER};border-radius:2px">'
        f"{esc(text.rstrip())}</pre>" for title, text in parts)
    if facts:
        body = (f'<div style="color:{MUTED};font-size:85%">{esc(" · ".join(facts))}</div>'
                + body)
    summary = (f'<summary style="cursor:pointer;color:{ERROR};white-space:nowrap;overflow:hidden;'
               f'text-overflow:ellipsis" title="{esc(head)}">{esc(head)}</summary>')
    if not body:
        return f'<div class="cj-error" style="color:{ERROR}" title="{esc(head)}">{esc(head)}</div>'
    return (f'<details class="cj-error"{" open" if open_ else ""} style="margin:2px 0">'
            f"{summary}{body}</details>")
