"""``JobStatus``: the live status of a running ``%%cluster`` cell.

Same interface as the text ``StatusLine`` of :mod:`clusterjupyter.magics` — ``JobStatus(shell,
rec)`` displays itself, ``update(rec)`` is called by ``Waiter``/``PushBack`` — so it can replace
it. In a Jupyter kernel it is a small widget: state badge, queue reason, elapsed time, the last
lines of stdout/stderr and a cancel button, settling into a final summary (state, duration,
host, exit reason). Without a kernel (plain IPython, terminal, tests) it is the text line.

Between ``update`` calls it keeps itself current from the widgets' background thread (see
:mod:`._live`): journal re-reads each second, monitor events at once, log tails every two
seconds in a worker thread. The cancel button works while the cell blocks where the kernel
supports it (see :mod:`._kernel`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ipywidgets as W

from ..journal import JobRecord
from ..states import JobState
from . import _html as H
from ._kernel import kernel_of, route_to_subshell
from ._live import Background, hub

VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def _summary(rec: JobRecord) -> str:
    from ..journal import summary

    return summary(rec)


class JobStatus:
    """Live status of one job in the cell that submitted it.

    ``mode``: ``"auto"`` (a widget when the shell has a kernel, else the text line),
    ``"widget"`` or ``"text"``. ``show=False`` builds it without displaying it.
    """

    #: lines of stdout and of stderr shown while the job runs
    tail_lines = 3
    #: seconds between journal re-reads / log tails
    interval = 1.0
    tail_interval = 2.0

    def __init__(self, shell: Any, rec: JobRecord, *, mode: str = "auto", show: bool = True):
        if mode not in ("auto", "widget", "text"):
            raise ValueError(f"mode must be 'auto', 'widget' or 'text', not {mode!r}")
        self.shell = shell
        self.record = rec
        self.last = _summary(rec)
        self.handle: Any = None
        self.widget: W.VBox | None = None
        self.routed = False
        self.settled = False
        self._lock = threading.RLock()
        self._backend: Any = None
        self._tailer = Background(f"status-tail-{rec.id[:8]}")
        self._canceller = Background(f"status-cancel-{rec.id[:8]}")
        self._next_read = 0.0
        self._next_tail = 0.0
        self._shown_state: JobState | None = None
        kernel = kernel_of(shell)
        if mode == "text" or (mode == "auto" and kernel is None):
            if kernel is not None and show:
                from IPython.display import display

                self.handle = display({"text/plain": self.last}, raw=True, display_id=True)
            return
        self._build()
        self.routed = route_to_subshell(self.cancel_button, kernel)
        if not self.routed:
            self.cancel_button.tooltip = ("cancel the job (while this cell waits, interrupt the "
                                          "kernel instead: this kernel handles clicks only "
                                          "between cells)")
        self._render(rec)
        if show:
            from IPython.display import display

            self.handle = display(self._bundle(), raw=True, display_id=True)
            self._shown_state = rec.state
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
        self.tail = W.HTML(layout=W.Layout(display="none"))
        row = W.HBox([self.badge, self.info, self.cancel_button],
                     layout=W.Layout(align_items="center"))
        self.widget = W.VBox([row, self.tail], layout=W.Layout(
            border_left=f"3px solid {H.STATE_COLOURS[self.record.state]}", padding="0 0 0 6px",
            margin="2px 0"), _dom_classes=["cj-job-status"])

    def _bundle(self) -> dict[str, Any]:
        assert self.widget is not None
        return {"text/plain": self.last,
                VIEW_MIME: {"version_major": 2, "version_minor": 0,
                            "model_id": self.widget.model_id}}

    def _render(self, rec: JobRecord) -> None:
        assert self.widget is not None
        border = f"3px solid {H.STATE_COLOURS[rec.state]}"
        self._set(self.badge, H.badge(rec.state))
        if self.widget.layout.border_left != border:
            self.widget.layout.border_left = border
        native = f" #{rec.native_id}" if rec.native_id else ""
        where = H.esc(f"{rec.profile}{native}")
        head = (f"<b>{H.esc(rec.name)}</b> <code title=\"{H.esc(rec.id)}\">{H.esc(rec.id[:8])}"
                f"</code> <span style=\"color:{H.MUTED}\">on {where}</span>")
        if rec.state.final:
            parts = [f"after {H.fmt_seconds(rec.elapsed, precise=True)}" if rec.started
                     else "before starting"]
            if rec.host:
                parts.append(f"on {H.esc(rec.host)}")
            if rec.reason:
                parts.append(f"— {H.esc(rec.reason)}")
            if rec.exit_code not in (None, 0) and "exit code" not in rec.reason:
                parts.append(f"(exit code {rec.exit_code})")
            body = " ".join(parts)
        else:
            body = H.esc(H.elapsed_text(rec))
            if rec.reason:
                body += f" · <i>{H.esc(rec.reason)}</i>"
        self._set(self.info, f"{head} · {body}")

    @staticmethod
    def _set(widget: W.Widget, value: str) -> None:
        if widget.value != value:
            widget.value = value

    # -- the StatusLine interface -------------------------------------------------------------
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
            self._render(rec)
            if rec.state.final:
                self._settle()

    def _settle(self) -> None:
        """The job is over: the final summary, no button, the log tail only if it failed."""
        self.settled = True
        hub.unsubscribe(self)
        rec = self.record
        self.cancel_button.layout.display = "none"
        if rec.state.ok:
            self.tail.layout.display = "none"
        else:
            self._tailer.submit(self._fetch_tail, on_error=lambda e: None)
        if self.handle is not None and self._shown_state is not rec.state:
            # the text/plain twin is what a saved notebook shows without the widget state
            self.handle.update(self._bundle(), raw=True)
            self._shown_state = rec.state

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
        if not self.settled and now >= self._next_tail and self.record.started is not None:
            self._next_tail = now + self.tail_interval
            self._tailer.submit(self._fetch_tail, on_error=lambda e: None)
        return not self.settled

    def _fetch_tail(self) -> None:
        rec, backend = self.record, self.backend
        out = backend.logs(rec, "stdout", self.tail_lines).rstrip("\n")
        err = backend.logs(rec, "stderr", self.tail_lines).rstrip("\n")
        parts = []
        if out:
            parts.append(H.esc(out))
        if err:
            parts.append(f'<span style="color:{H.ERROR}">{H.esc(err)}</span>')
        value = ("<pre style=\"margin:0;font-size:85%;line-height:1.3;white-space:pre-wrap;"
                 f"color:{H.MUTED}\">" + "\n".join(parts) + "</pre>") if parts else ""
        with self._lock:
            if self.settled and rec.state.ok:
                return
            self._set(self.tail, value)
            self.tail.layout.display = "" if value else "none"

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
            self._set(self.tail, H.message(f"cancel failed: {type(e).__name__}: {e}", "error"))
            self.tail.layout.display = ""

    def __repr__(self) -> str:
        return f"<JobStatus {self.last}>"
