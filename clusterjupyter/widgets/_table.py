"""The Jobs tab's table: its columns, their headers and the HTML of a job's or a sweep's row."""

from __future__ import annotations

import time
from typing import Any

import ipywidgets as W

from ..failure import explain
from ..journal import JobRecord
from ..states import JobState
from . import _html as H

HEADERS = ("name", "id", "profile", "state", "reason", "elapsed")
HEADER_TIPS = ("the job's name (--name); its notebook on hover", "the job's id (its first 8 "
               "digits; %cluster status ID)", "the profile it ran on, with the scheduler's id",
               "the job's state", "why it is waiting, or why it did not complete",
               "running time, or time in the queue")
#: the table's columns follow the width of the table itself (a container query): a narrow
#: notebook drops the profile column, then the id and the reason (the reason stays in the state's
#: tooltip and the error view); headers are never cut
TABLE_CSS = (
    "<style>.cj-jobs-cell{container-type:inline-size}"
    ".cj-jobs-grid{grid-template-columns:minmax(5em,2fr) 5.6em minmax(4.5em,1.2fr) 7em "
    "minmax(0,3fr) 4.6em}"
    "@container (max-width:46em){.cj-jobs-grid{grid-template-columns:minmax(5em,2fr) 5.6em 7em "
    "minmax(0,3fr) 4.6em}.cj-jobs-grid>.cj-col-profile{display:none}}"
    "@container (max-width:30em){.cj-jobs-grid{grid-template-columns:minmax(4em,1fr) 7em 4.6em}"
    ".cj-jobs-grid>.cj-col-id,.cj-jobs-grid>.cj-col-profile,.cj-jobs-grid>.cj-col-reason"
    "{display:none}}</style>")
CELL_CLASSES = tuple(f"cj-col-{h}" for h in HEADERS)
#: buttons never shrink (a narrow notebook cuts the reason column, never a button)
BUTTON = W.Layout(width="4.8em", flex="0 0 4.8em", margin="0 1px", padding="0")
BUTTONS_WIDTH = "calc(14.4em + 6px)"
def row_html(rec: JobRecord) -> str:
    """A job's row: name, id, profile, state, reason, elapsed."""
    native = f" #{rec.native_id}" if rec.native_id else ""
    reason = explain(rec) if rec.state.final and not rec.state.ok else rec.reason
    if rec.state.ok and rec.result_status == "pushed":
        reason = (reason + "; " if reason else "") + "result pushed"
    cells = [H.titled(rec.name, f"{rec.name}\nnotebook: {rec.notebook or '-'}"),
             H.titled(rec.id[:8], rec.id, code=True),
             H.titled(f"{rec.profile}{native}", f"{rec.scheduler} job{native}"),
             f'<span title="{H.esc(reason)}">{H.badge(rec.state)}</span>',
             H.titled(reason, reason),
             f'<span style="float:right">{H.esc(H.elapsed_text(rec))}</span>']
    return H.grid(cells, cls="cj-jobs-grid", cell_classes=CELL_CLASSES)


def table_cell() -> W.HTML:
    """The HTML part of a table row (its width decides which columns show)."""
    return W.HTML(layout=W.Layout(flex="1 1 auto", min_width="0", overflow="hidden"),
                  _dom_classes=["cj-jobs-cell"])


def sweep_html(ref: dict[str, Any], members: list[JobRecord]) -> str:
    """A sweep's row: its name and size, id, profile, one state, element counts, elapsed."""
    c = ref["counts"]
    counts = " · ".join(f"{c[k]} {k}" for k in ("done", "running", "pending", "failed") if c.get(k))
    listed = f" ({ref['listed']} listed)" if ref["listed"] < ref["size"] else ""
    text = f"{ref['size']} elements{listed}: {counts}"
    started = [m.started for m in members if m.started is not None]
    ended = [m.finished for m in members if m.finished is not None]
    state = JobState.parse(ref["state"])
    elapsed = "-"
    if started:
        end = max(ended) if state.final and ended else time.time()
        elapsed = H.fmt_seconds(end - min(started), precise=state.final)
    profile = members[0].profile
    cells = [H.titled(f"{ref['name']} [{ref['size']}]", f"sweep {ref['id']}\n"
                      f"%cluster sweep {ref['id'][:8]}: each element"),
             H.titled(ref["id"][:8], ref["id"], code=True),
             H.titled(profile, f"{members[0].scheduler} job array"),
             f'<span title="{H.esc(text)}">{H.badge(state)}</span>',
             H.titled(text, text),
             f'<span style="float:right">{H.esc(elapsed)}</span>']
    return H.grid(cells, cls="cj-jobs-grid", cell_classes=CELL_CLASSES)


def group(recs: list[JobRecord], refs: dict[str, dict[str, Any]]
          ) -> tuple[list[str], dict[str, list[JobRecord]], list[JobRecord]]:
    """The table's rows (pure): ``order``, job ids and sweep ids, newest first, a sweep where
    its newest element would be; ``members``: each sweep's elements (latest attempts) by index;
    ``shown``: every job that has a row (an attempt a retry replaced has none). ``refs``: from
    :func:`clusterjupyter.api.list_rows`."""
    order: list[str] = []
    members: dict[str, list[JobRecord]] = {}
    shown: list[JobRecord] = []
    for r in recs:
        ref = refs.get(r.id)
        if ref is None:
            order.append(r.id)
        elif ref["latest"]:
            if ref["id"] not in members:
                order.append(ref["id"])
                members[ref["id"]] = []
            members[ref["id"]].append(r)
        else:
            continue
        shown.append(r)
    for els in members.values():
        els.sort(key=lambda m: refs[m.id]["index"])
    return order, members, shown
