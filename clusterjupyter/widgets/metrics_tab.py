"""The panel's Metrics tab: per-profile figures from :mod:`clusterjupyter.metrics`.

Read from the journal only (no scheduler is asked anything), when the tab is opened and when
"refresh" is clicked: jobs by state, errors, the counters (submissions, retried submissions,
reconnects, scheduler commands) and queue-wait / run-time percentiles.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from .. import metrics
from ..text import short_duration
from ._html import badge, esc, grid, message

COLUMNS = "minmax(6em,1fr) minmax(10em,3fr) 4em repeat(4,5.5em) minmax(9em,2fr) minmax(9em,2fr)"
HEADER = ("profile", "jobs by state", "errors", "submitted", "retried", "reconnects",
          "commands", "queue wait p50/p90/p99", "run time p50/p90/p99")


def _timing(p: dict[str, float]) -> str:
    if not p:
        return "-"
    return " / ".join(short_duration(p[k]) for k in ("p50", "p90", "p99"))


def rows(figures: dict[str, metrics.ProfileMetrics]) -> str:
    """The table as HTML (pure: tested without a frontend)."""
    out = [grid([esc(h) for h in HEADER], COLUMNS, header=True)]
    for m in figures.values():
        states = " ".join(f"{badge(s)} {n}" for s, n in sorted(m.states.items())) or "-"
        c = m.counters
        out.append(grid([esc(m.profile), states, esc(m.errors),
                         *(esc(c.get(k, 0)) for k in metrics.COUNTERS),
                         esc(_timing(m.queue_wait)), esc(_timing(m.run_time))], COLUMNS))
    return "".join(out)


class MetricsTab:
    """Figures of every profile with jobs in the journal."""

    def __init__(self, panel: Any):
        self.panel = panel
        self.loaded = False
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       layout=W.Layout(width="auto"))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.table = W.HTML()
        self.message = W.HTML()
        self.widget = W.VBox([W.HBox([self.refresh_button, self.message]), self.table],
                             layout=W.Layout(overflow="auto"))

    def refresh(self) -> None:
        self.loaded = True
        try:
            figures = metrics.collect()
        except Exception as e:  # a broken journal is shown, not raised into the frontend
            self.message.value = message(f"cannot read the metrics: {e}", "error")
            return
        self.message.value = message("" if figures else "no jobs in the journal yet")
        self.table.value = rows(figures)

    def close(self) -> None:
        for w in (self.refresh_button, self.table, self.message, self.widget):
            w.close()
