"""The panel's Jobs tab: this user's jobs from the journal (all kernels), live, with actions."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from .. import api
from ..failure import empty_log, error_of, headline
from ..journal import JobRecord
from ..states import JobState
from . import _html as H
from ._kernel import call_when_idle, on_main_thread, route_to_subshell
from ._table import (BUTTON, BUTTONS_WIDTH, CELL_CLASSES, HEADER_TIPS, HEADERS, TABLE_CSS,
                     group, row_html, sweep_html, table_cell)
from ._live import Background, close_tree, hub

if TYPE_CHECKING:
    from .panel import Panel

#: the panel's own log streams: "error" is why a job failed (kept in the journal)
VIEWS = ("error", *api.LOG_STREAMS)
STATE_FILTERS = [("all", ""), ("active", "active"), *[(s.value.replace("_", " "), s.value)
                                                      for s in JobState]]
LOG_TAIL = 400


class _SweepRow:
    """A sweep: one row (its state and element counts) whose element rows unfold below."""

    def __init__(self, tab: JobsTab, sweep_id: str):
        self.id = sweep_id
        self.expanded = False
        self.html = table_cell()
        self.cancel = W.Button(description="cancel", tooltip="cancel every unfinished element "
                               "(one scheduler command per array)", layout=BUTTON,
                               _dom_classes=["cj-sweep-cancel"])
        self.toggle = W.Button(description="expand", tooltip="show each element's state and "
                               "logs", layout=BUTTON, _dom_classes=["cj-sweep-toggle"])
        self.push = W.Button(description="push", disabled=True, layout=BUTTON,
                             tooltip=f"%cluster result {sweep_id[:8]} binds what the finished "
                             "elements bound, per element")
        self.cancel.on_click(lambda _b: tab.cancel_sweep(sweep_id))
        self.toggle.on_click(lambda _b: self.expand(not self.expanded))
        route_to_subshell(self.cancel, tab.kernel)
        self.elements = W.VBox([], layout=W.Layout(display="none", margin="0 0 0 1.5em"),
                               _dom_classes=["cj-sweep-elements"])
        head = W.HBox([self.html, self.cancel, self.toggle, self.push],
                      layout=W.Layout(align_items="center", border_bottom=f"1px solid "
                                      f"{H.BORDER}"), _dom_classes=["cj-sweep-row"])
        self.box = W.VBox([head, self.elements])

    def expand(self, value: bool) -> None:
        self.expanded = value
        self.elements.layout.display = "" if value else "none"
        self.toggle.description = "fold" if value else "expand"

    def show(self, ref: dict[str, Any], members: list[JobRecord], rows: list[Any]) -> None:
        html = sweep_html(ref, members)
        if self.html.value != html:
            self.html.value = html
        active = not JobState.parse(ref["state"]).final
        if self.cancel.disabled == active:
            self.cancel.disabled = not active
        children = tuple(r.box for r in rows)
        if self.elements.children != children:
            self.elements.children = children

    def close(self) -> None:
        close_tree(self.box)


def _pushable(rec: JobRecord) -> bool:
    return rec.state.final and (rec.result_status in ("available", "pushed")
                                or rec.state in (JobState.COMPLETED, JobState.FAILED))


class _Row:
    """One job: an HTML grid row plus its cancel / logs / push buttons."""

    def __init__(self, tab: JobsTab, rec: JobRecord):
        self.id = rec.id
        self.record = rec
        self.html = table_cell()
        self.cancel = W.Button(description="cancel", tooltip="cancel this job", layout=BUTTON,
                               _dom_classes=["cj-row-cancel"])
        self.logs = W.Button(description="logs", tooltip="show this job's logs (live)",
                             layout=BUTTON, _dom_classes=["cj-row-logs"])
        self.push = W.Button(description="push", tooltip="load this job's result into this "
                             "kernel's namespace", layout=BUTTON, _dom_classes=["cj-row-push"])
        job_id = rec.id
        self.cancel.on_click(lambda _b: tab.cancel(job_id))
        self.logs.on_click(lambda _b: tab.show_logs(job_id))
        self.push.on_click(lambda _b: tab.push(job_id))
        for b in (self.cancel, self.logs):
            route_to_subshell(b, tab.kernel)
        self.box = W.HBox([self.html, self.cancel, self.logs, self.push],
                          layout=W.Layout(align_items="center", border_bottom=f"1px solid "
                                          f"{H.BORDER}"), _dom_classes=["cj-job-row"])
        self.show(rec)

    def show(self, rec: JobRecord) -> None:
        self.record = rec
        html = row_html(rec)
        if self.html.value != html:
            self.html.value = html
        active = not rec.state.final
        if self.cancel.disabled == active:
            self.cancel.disabled = not active
        if self.push.disabled == _pushable(rec):
            self.push.disabled = not _pushable(rec)

    def close(self) -> None:
        close_tree(self.box)


class JobsTab:
    """Filters, the job table, a message line and a live log view."""

    #: seconds between journal reads (events from the monitors come at once)
    interval = 2.0
    #: slower reads once nothing has been active for a while
    idle_interval = 10.0
    idle_after = 300.0
    log_interval = 2.0

    def __init__(self, panel: Panel, limit: int = 50):
        self.panel = panel
        self.kernel = panel.kernel
        self.limit = limit
        self.rows: dict[str, _Row] = {}
        self.sweeps: dict[str, _SweepRow] = {}
        self.records: list[JobRecord] = []
        self._next = 0.0
        self._last_active = time.monotonic()
        self._logs = Background("panel-logs")
        self._actions = Background("panel-cancel")
        self._log_job: str | None = None
        self._log_next = 0.0
        self._log_done = False

        self.state_filter = W.Dropdown(options=STATE_FILTERS, value="", description="state",
                                       layout=W.Layout(width="13em"))
        self.profile_filter = W.Dropdown(options=[("all", "")], value="", description="profile",
                                         layout=W.Layout(width="15em"))
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       layout=W.Layout(width="auto", flex="0 0 auto"))
        self.counts = W.HTML(layout=W.Layout(flex="1 1 12em", min_width="0", overflow="hidden"))
        self.state_filter.observe(self._filter_changed, "value")
        self.profile_filter.observe(self._filter_changed, "value")
        self.refresh_button.on_click(lambda _b: self.reload())
        route_to_subshell(self.refresh_button, self.kernel)
        heads = [H.titled(h, tip) for h, tip in zip(HEADERS, HEADER_TIPS, strict=True)]
        head = table_cell()
        head.value = TABLE_CSS + H.grid(heads, header=True, cls="cj-jobs-grid",
                                        cell_classes=CELL_CLASSES)
        header = W.HBox([head,
                         W.Box(layout=W.Layout(width=BUTTONS_WIDTH, flex="0 0 auto"))],
                        layout=W.Layout(border_bottom=f"2px solid {H.BORDER}"))
        self.table = W.VBox([], layout=W.Layout(max_height="26em", overflow="auto"))
        self.empty = W.HTML()
        self.message = W.HTML()
        self.log_title = W.HTML(layout=W.Layout(flex="1 1 auto"))
        self.log_stream = W.ToggleButtons(options=list(VIEWS), value="stdout",
                                          style={"button_width": "auto"})
        self.log_close = W.Button(description="close",
                                  layout=W.Layout(width="auto", flex="0 0 auto"))
        self.log_view = W.HTML()
        self.log_stream.observe(lambda _c: self._fetch_logs(force=True), "value")
        self.log_close.on_click(lambda _b: self.hide_logs())
        self.log_box = W.VBox([W.HBox([self.log_title, self.log_stream, self.log_close],
                                      layout=W.Layout(align_items="center", flex_flow="row wrap")),
                               self.log_view],
                              layout=W.Layout(display="none", margin="6px 0 0 0"))
        self.widget = W.VBox([
            W.HBox([self.state_filter, self.profile_filter, self.refresh_button, self.counts],
                   layout=W.Layout(align_items="center", flex_flow="row wrap")),
            header, self.table, self.empty, self.message, self.log_box])
        self.update_profiles()
        self.reload()

    # -- reading the journal ------------------------------------------------------------------
    @property
    def states(self) -> tuple[str, ...] | None:
        v = self.state_filter.value
        if not v:
            return None
        return ("pending", "running") if v == "active" else (v,)

    def update_profiles(self) -> None:
        from ..profiles import load_profiles

        try:
            names = list(load_profiles())
        except Exception as e:
            names = []
            self.say(f"profiles: {e}", "error")
        seen = {r.profile for r in self.records}
        names += sorted(seen - set(names))
        options = [("all", ""), *[(n, n) for n in names]]
        with self.panel.lock:
            current = self.profile_filter.value
            if list(self.profile_filter.options) != options:
                self.profile_filter.options = options
                self.profile_filter.value = current if current in names else ""

    def _filter_changed(self, _change: Any) -> None:
        self.reload()

    def reload(self) -> None:
        """Read the journal now and redraw."""
        self._next = 0.0
        self._read()
        hub.poke()

    def tick(self, events: set[str]) -> None:
        if events or time.monotonic() >= self._next:
            self._read()
        if self._log_job is not None and time.monotonic() >= self._log_next:
            self._fetch_logs()

    def _read(self) -> None:
        now = time.monotonic()
        recs, refs = api.list_rows(self.states, self.profile_filter.value or None, self.limit)
        active = [r for r in recs if not r.state.final]
        if active:
            self._last_active = now
            hub.refresh(active)
        idle = now - self._last_active > self.idle_after
        self._next = now + (self.idle_interval if idle else self.interval)
        self.records = recs
        self._render(recs, refs)

    def _render(self, recs: list[JobRecord], refs: dict[str, dict[str, Any]]) -> None:
        order, members, shown = group(recs, refs)
        with self.panel.lock:
            keep = {r.id for r in shown}
            for job_id in [j for j in self.rows if j not in keep]:
                self.rows.pop(job_id).close()
            for sweep_id in [s for s in self.sweeps if s not in members]:
                self.sweeps.pop(sweep_id).close()
            for r in shown:
                row = self.rows.get(r.id)
                if row is None:
                    self.rows[r.id] = _Row(self, r)
                else:
                    row.show(r)
            boxes = []
            for key in order:
                if key not in members:
                    boxes.append(self.rows[key].box)
                    continue
                sweep_id = key
                els = members[sweep_id]
                srow = self.sweeps.get(sweep_id)
                if srow is None:
                    srow = self.sweeps[sweep_id] = _SweepRow(self, sweep_id)
                srow.show(refs[els[0].id], els, [self.rows[m.id] for m in els])
                boxes.append(srow.box)
            children = tuple(boxes)
            if self.table.children != children:
                self.table.children = children
            empty = "" if recs else H.message("no jobs in the journal" + (
                " match these filters" if self.states or self.profile_filter.value else ""))
            if self.empty.value != empty:
                self.empty.value = empty
            counts: dict[str, int] = {}
            for r in recs:
                counts[r.state.value] = counts.get(r.state.value, 0) + 1
            text = " · ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
            errors = "; ".join(f"{p}: {e}" for p, e in hub.errors.items())
            # one line, cut with the whole text on hover: it never overflows the panel
            full = text + (f"; {errors}" if errors else "")
            value = (f'<div title="{H.esc(full)}" style="white-space:nowrap;overflow:hidden;'
                     f'text-overflow:ellipsis;padding-left:.5em">'
                     f'<span style="color:{H.MUTED}">{H.esc(text)}</span>'
                     + (" " + H.message(errors, "error") if errors else "") + "</div>")
            if self.counts.value != value:
                self.counts.value = value

    def record(self, job_id: str) -> JobRecord:
        return api.journal().get(job_id) or api.get_job(job_id)

    def say(self, text: str, kind: str = "info") -> None:
        with self.panel.lock:
            self.message.value = H.message(text, kind)

    # -- actions ------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Cancel a job (in a worker thread: the scheduler may be slow)."""
        row = self.rows.get(job_id)
        if row is not None:
            with self.panel.lock:
                row.cancel.disabled = True
        self.say(f"cancelling job {job_id[:8]}…")

        def work() -> None:
            rec = api.cancel_job(job_id)
            self.say(f"cancel requested for job {job_id[:8]} on {rec.profile}", "ok")
            hub.poke()

        def failed(e: BaseException) -> None:
            self.say(f"could not cancel job {job_id[:8]}: {type(e).__name__}: {e}", "error")
            if row is not None:
                with self.panel.lock:
                    row.cancel.disabled = False

        if not self._actions.submit(work, on_error=failed):
            # one cancel is under way; run this one in its own worker
            Background("panel-cancel-more").submit(work, on_error=failed)

    def cancel_sweep(self, sweep_id: str) -> None:
        """Cancel a sweep's unfinished elements (in a worker thread)."""
        self.say(f"cancelling sweep {sweep_id[:8]}…")

        def work() -> None:
            from ..sweeps import Sweep

            c = Sweep(sweep_id).cancel()
            self.say(f"sweep {sweep_id[:8]}: {c.failed} of {c.total} elements did not "
                     "complete", "ok")
            hub.poke()

        def failed(e: BaseException) -> None:
            self.say(f"could not cancel sweep {sweep_id[:8]}: {type(e).__name__}: {e}", "error")

        Background(f"panel-cancel-sweep-{sweep_id[:8]}").submit(work, on_error=failed)

    def show_logs(self, job_id: str) -> None:
        """Show (and follow while it runs) the logs of a job; for a failed job, why it failed."""
        self._log_job = job_id
        self._log_done = False
        rec = self.rows[job_id].record if job_id in self.rows else self.record(job_id)
        failed = rec.state.final and not rec.state.ok
        with self.panel.lock:
            view = "error" if failed else ("stdout" if self.log_stream.value == "error"
                                           else self.log_stream.value)
            if self.log_stream.value != view:
                self._log_job = None  # no fetch from the observer: one below
                self.log_stream.value = view
                self._log_job = job_id
            self.log_title.value = (f"<b>logs of {H.esc(rec.name)}</b> "
                                    f"<code>{H.esc(rec.id[:8])}</code>")
            self.log_box.layout.display = ""
        self._fetch_logs(force=True)

    def hide_logs(self) -> None:
        self._log_job = None
        with self.panel.lock:
            self.log_box.layout.display = "none"
            self.log_view.value = ""

    def _fetch_logs(self, force: bool = False) -> None:
        job_id = self._log_job
        if job_id is None or (self._log_done and not force):
            return
        self._log_next = time.monotonic() + self.log_interval
        stream = self.log_stream.value

        def work() -> None:
            rec = self.record(job_id)
            if stream == "error":
                value = self._error_html(rec)
                with self.panel.lock:
                    if self._log_job == job_id and self.log_view.value != value:
                        self.log_view.value = value
                    self._log_done = rec.state.final
                return
            text = api.job_logs(job_id, stream, LOG_TAIL)
            with self.panel.lock:
                if self._log_job != job_id:
                    return
                value = H.log_view(text, empty_log(stream, rec.state.final))
                if self.log_view.value != value:
                    self.log_view.value = value
                if rec.state.final:
                    self._log_done = True  # one read after the end, then stop following

        def failed(e: BaseException) -> None:
            with self.panel.lock:
                self.log_view.value = H.message(f"cannot read the {stream} log: {e}", "error")

        self._logs.submit(work, on_error=failed, coalesce=force)

    @staticmethod
    def _error_html(rec: JobRecord) -> str:
        if not rec.state.final:
            return H.message(f"job {rec.id[:8]} is still {rec.state.value}")
        if rec.state.ok:
            return H.message(f"job {rec.id[:8]} completed: nothing went wrong", "ok")
        from ..backends import backend_for_record

        try:
            err = error_of(rec, backend_for_record(rec))
        except Exception:
            err = rec.error
        return H.error_view(headline(rec, err), err, open_=True)

    def push(self, job_id: str) -> None:
        """Load a finished job's values into this kernel's namespace (between cells)."""
        shell = self.panel.shell
        if shell is None:
            self.say("no IPython kernel to push into", "error")
            return
        if not on_main_thread():
            # the click was handled on a subshell: the namespace is the main thread's business
            if call_when_idle(shell, lambda: self._push_now(job_id, shell)):
                self.say(f"job {job_id[:8]}: the result will be pushed when the kernel is idle")
                return
        self._push_now(job_id, shell)

    def _push_now(self, job_id: str, shell: Any) -> None:
        from ..jobs import Job, UnpicklableOutputWarning, push, register_source

        try:
            rec = self.record(job_id)
            if not rec.state.final:
                self.say(f"job {job_id[:8]} is still {rec.state.value}", "error")
                return
            job = Job(rec)
            register_source(rec.id, rec.cell)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnpicklableOutputWarning)
                result, names = push(job, shell.user_ns, shell.user_module)
        except Exception as e:
            self.say(f"job {job_id[:8]}: {type(e).__name__}: {e}", "error")
            return
        text = f"job {job_id[:8]}: pushed {', '.join(names) if names else 'no names'}"
        if result.exception is not None:
            text += (f"; the cell raised {type(result.exception).__name__}: {result.exception} "
                     f"(%cluster result {job_id[:8]} re-raises it)")
        for w in caught:
            text += f"; {w.message}"
        self.say(text, "error" if result.exception is not None else "ok")
        self.reload()

    def close(self) -> None:
        for row in self.rows.values():
            row.close()
        self.rows.clear()
        for srow in self.sweeps.values():
            srow.close()
        self.sweeps.clear()

