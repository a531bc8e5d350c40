"""``JobStatus``: the live status of a running ``%%cluster`` cell (the magics' status display).

The magics are given it (``load_ipython_extension`` passes it in; the core path never imports
widgets): ``JobStatus(shell, rec)`` displays itself, ``update(rec)`` is called by
``Waiter``/``PushBack``. In a Jupyter kernel it is one display per cell: a widget (state
badge, name, id, queue reason, elapsed time, a cancel button) while the job is active, replaced
by static HTML when the job ends — the final summary, and for a failed job the reason with its
remote traceback and log tail folded underneath. A saved or reopened notebook, or one whose
kernel restarted, therefore shows plain HTML, never a widget the frontend no longer has. The
job's output is not repeated here (the cell streams it). Without a kernel (plain IPython,
terminal, tests) it is a text line.

Between ``update`` calls it keeps itself current from the widgets' background thread (see
:mod:`._live`): journal re-reads each second, monitor events at once. The cancel button works
while the cell blocks where the kernel supports it (see :mod:`._kernel`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ipywidgets as W

from ..failure import explain
from ..journal import JobRecord
from . import _html as H
from ._fallback import VIEW_MIME, widget_bundle
from ._kernel import keep_busy_while_running, kernel_of, route_to_subshell
from ._live import Background, close_tree, hub

__all__ = ["JobStatus", "VIEW_MIME"]


def _summary(rec: JobRecord) -> str:
    from ..failure import summary

    return summary(rec)


class JobStatus:
    """Live status of one job in the cell that submitted it.

    ``mode``: ``"auto"`` (a widget when the shell has a kernel, else the text line),
    ``"widget"`` or ``"text"``. ``show=False`` builds it without displaying it.
    """

    #: seconds between journal re-reads
    interval = 1.0

    def __init__(self, shell: Any, rec: JobRecord, *, mode: str = "auto", show: bool = True):
        if mode not in ("auto", "widget", "text"):
            raise ValueError(f"mode must be 'auto', 'widget' or 'text', not {mode!r}")
        self.shell = shell
        self.record = rec
        self.last = _summary(rec)
        self.handle: Any = None
        self.widget: W.HBox | None = None
        self.final_html = ""
        self.routed = False
        self.settled = False
        self._lock = threading.RLock()
        self._backend: Any = None
        self._canceller = Background(f"status-cancel-{rec.id[:8]}")
        self._finisher = Background(f"status-final-{rec.id[:8]}")
        self._next_read = 0.0
        self._shown_state = rec.state
        kernel = kernel_of(shell)
        if mode == "text" or (mode == "auto" and kernel is None):
            if kernel is not None and show:
                from IPython.display import display

                self.handle = display({"text/plain": self.last}, raw=True, display_id=True)
            return
        keep_busy_while_running(shell)
        self._build()
        self.routed = route_to_subshell(self.cancel_button, kernel)
        if not self.routed:
            self.cancel_button.tooltip = ("cancel the job (while this cell waits, interrupt the "
                                          "kernel instead: this kernel handles clicks only "
                                          "between cells)")
        self._render(rec)
        if show:
            from IPython.display import display

            data, metadata = self._bundle()
            self.handle = display(data, raw=True, metadata=metadata, display_id=True)
        if rec.state.final:
            self._settle()
        else:
            try:
                hub.listen(self.backend.monitor)
            except Exception:
                pass
            hub.subscribe(self)

    # -- widgets ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.badge = W.HTML(layout=W.Layout(flex="0 0 auto", margin="0 0.5em 0 0"))
        self.info = W.HTML(layout=W.Layout(flex="1 1 auto", min_width="0"))
        self.cancel_button = W.Button(description="cancel", icon="stop", button_style="",
                                      tooltip="cancel the job",
                                      layout=W.Layout(width="auto", flex="0 0 auto"),
                                      _dom_classes=["cj-cancel"])
        self.cancel_button.on_click(self._on_cancel)
        self.widget = W.HBox([self.badge, self.info, self.cancel_button], layout=W.Layout(
            align_items="center", border_left=f"3px solid {H.STATE_COLOURS[self.record.state]}",
            padding="0 0 0 6px", margin="2px 0"), _dom_classes=["cj-job-status"])

    def _bundle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The live display: the widget, and static HTML for a frontend that lost it."""
        assert self.widget is not None
        rec = self.record
        note = (f"live status lost with the kernel's widgets; "
                f"<code>%cluster status {H.esc(rec.id[:8])}</code> tells where it is now")
        since = time.strftime("%H:%M:%S", time.localtime(rec.started or rec.submitted))
        body = f"{'running' if rec.started else 'queued'} since {since}"
        return widget_bundle(self.widget.model_id, self.last,
                             self._static(rec, note=note, body=body))

    @staticmethod
    def _head(rec: JobRecord) -> str:
        native = f" #{rec.native_id}" if rec.native_id else ""
        where = H.esc(f"{rec.profile}{native}")
        return (f"<b>{H.esc(rec.name)}</b> <code title=\"{H.esc(rec.id)}\">{H.esc(rec.id[:8])}"
                f"</code> <span style=\"color:{H.MUTED}\">on {where}</span>")

    def _body(self, rec: JobRecord) -> str:
        if rec.state.final:
            parts = [f"after {H.fmt_seconds(rec.elapsed, precise=True)}" if rec.started
                     else "before starting"]
            if rec.host:
                parts.append(f"on {H.esc(rec.host)}")
            if not rec.state.ok:
                parts.append(f"— {H.esc(explain(rec))}")
            return " ".join(parts)
        body = H.esc(H.elapsed_text(rec))
        if rec.reason:
            body += f" · <i>{H.esc(rec.reason)}</i>"
        return body

    def _static(self, rec: JobRecord, error: dict | None = None, note: str = "",
                body: str = "") -> str:
        """The status as plain HTML (what stays in the notebook once the job has ended);
        ``note`` (HTML) and ``body`` (text, instead of the elapsed time) for a display that
        outlives its widget."""
        colour = H.STATE_COLOURS[rec.state]
        if note:
            note = f' <span style="color:{H.MUTED}">({note})</span>'
        body = H.esc(body) if body else self._body(rec)
        line = (f'<div style="display:flex;align-items:center;gap:.5em">{H.badge(rec.state)}'
                f'<span style="min-width:0">{self._head(rec)} · {body}{note}'
                '</span></div>')
        extra = ""
        if error and (error.get("traceback") or error.get("log_tail")):
            extra = H.error_view("details", error, open_=False)
        return (f'<div class="cj-job-status cj-static" style="border-left:3px solid {colour};'
                f'padding:0 0 0 6px;margin:2px 0">{line}{extra}</div>')

    def _render(self, rec: JobRecord) -> None:
        assert self.widget is not None
        border = f"3px solid {H.STATE_COLOURS[rec.state]}"
        self._set(self.badge, H.badge(rec.state))
        if self.widget.layout.border_left != border:
            self.widget.layout.border_left = border
        self._set(self.info, f"{self._head(rec)} · {self._body(rec)}")

    @staticmethod
    def _set(widget: W.Widget, value: str) -> None:
        if widget.value != value:
            widget.value = value

    # -- the status display interface ---------------------------------------------------------
    def update(self, rec: JobRecord) -> None:
        """Show ``rec`` (called from the cell's thread, the monitor's or the widgets' thread)."""
        with self._lock:
            if self.settled:
                return
            self.record = rec
            text = _summary(rec)
            if self.widget is None:
                if self.handle is not None and text != self.last:
                    self.handle.update({"text/plain": text}, raw=True)
                self.last = text
                return
            self.last = text
            changed = rec.state is not self._shown_state
            self._render(rec)
            if rec.state.final:
                self._settle()
            elif changed and self.handle is not None:
                # the static alternative follows the state (a rare message: not every tick)
                self._shown_state = rec.state
                data, metadata = self._bundle()
                self.handle.update(data, raw=True, metadata=metadata)

    def _settle(self) -> None:
        """The job is over: replace the widget by static HTML (no widget left to go stale)."""
        self.settled = True
        hub.unsubscribe(self)
        self.cancel_button.layout.display = "none"
        rec = self.record
        self.final_html = self._static(rec)
        if rec.state.ok:
            self._show_final(rec, {})
        else:
            # the failure record may need a read of the job's files: not on this thread
            self._finisher.submit(self._final_error, on_error=lambda e: self._show_final(rec, {}))

    def _final_error(self) -> None:
        from ..failure import error_of

        rec = self.backend.journal.get(self.record.id) or self.record
        self._show_final(rec, error_of(rec, self.backend))

    def _show_final(self, rec: JobRecord, error: dict) -> None:
        with self._lock:
            self.final_html = self._static(rec, error)
            if self.handle is not None:
                self.handle.update({"text/plain": self.last, "text/html": self.final_html},
                                   raw=True)
                if self.widget is not None:
                    close_tree(self.widget)

    # -- background ---------------------------------------------------------------------------
    @property
    def backend(self) -> Any:
        if self._backend is None:
            from ..backends import backend_for_record

            self._backend = backend_for_record(self.record)
        return self._backend

    def _tick(self, events: set[str]) -> bool:
        if self.settled:
            return False
        now = time.monotonic()
        if self.record.id in events or now >= self._next_read:
            self._next_read = now + self.interval
            rec = self.backend.journal.get(self.record.id) or self.record
            self.update(rec)
        return not self.settled

    # -- cancel -------------------------------------------------------------------------------
    def _on_cancel(self, _button: Any = None) -> None:
        # may run on our kernel subshell while the cell blocks: start the work and return
        with self._lock:
            if self.settled:
                return
            self.cancel_button.disabled = True
            self.cancel_button.description = "cancelling…"
        self._canceller.submit(self._cancel, on_error=self._cancel_failed)

    def _cancel(self) -> None:
        backend = self.backend
        rec = backend.journal.get(self.record.id) or self.record
        backend.cancel(rec)
        hub.poke()

    def _cancel_failed(self, e: BaseException) -> None:
        with self._lock:
            self.cancel_button.disabled = False
            self.cancel_button.description = "cancel"
            self._set(self.info, self.info.value + " " + H.message(
                f"cancel failed: {type(e).__name__}: {e}", "error"))

    def __repr__(self) -> str:
        return f"<JobStatus {self.last}>"
