"""``Panel``: the job monitor (``%cluster panel`` or ``clusterjupyter.Panel()``).

Four tabs — Jobs, Profiles, Queue, Metrics — in a plain ipywidgets ``VBox``: no custom
JavaScript, so it renders in JupyterLab 4, Notebook 7 and any frontend with ipywidgets 8.

Live updates come from the widgets' background thread (:mod:`._live`), which holds the panel
through a weak reference. The panel stops updating when it is closed (``close()``, or
``Widget.close_all()``), when it is garbage-collected, and when the cell that displayed it runs
again (re-running a cell clears its output, so the old panel can no longer be seen; the
frontend's cell id comes with each execute request in JupyterLab and Notebook 7).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import ipywidgets as W

from ._fallback import widget_bundle
from ._kernel import cell_key, kernel_of
from ._live import close_tree, hub
from .jobs_tab import JobsTab
from .metrics_tab import MetricsTab
from .profiles_tab import ProfilesTab
from .queue_tab import QueueTab

_by_cell: dict[str, tuple[str, weakref.ReferenceType[Any]]] = {}
_by_cell_lock = threading.Lock()


class Panel(W.VBox):
    """Jobs, profiles and scheduler queues, kept live without blocking the kernel.

    ``shell``: the IPython shell results are pushed into (default: ``get_ipython()``);
    ``limit``: how many jobs the Jobs tab shows (newest first).
    """

    comm: Any  # ipywidgets' (None once the panel is closed)

    def __init__(self, shell: Any = None, limit: int = 50, **kwargs: Any):
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        self.shell = shell
        self.kernel = kernel_of(shell)
        self.lock = threading.RLock()
        self.closed = False
        with self.lock:
            self.jobs = JobsTab(self, limit)
            self.profiles = ProfilesTab(self)
            self.queue = QueueTab(self)
            self.metrics = MetricsTab(self)
            self.tabs = W.Tab(children=[self.jobs.widget, self.profiles.widget,
                                        self.queue.widget, self.metrics.widget])
            self.tabs.titles = ("Jobs", "Profiles", "Queue", "Metrics")
            self.tabs.observe(self._tab_changed, "selected_index")
        kwargs.setdefault("layout", W.Layout(width="100%"))
        super().__init__(children=[self.tabs], **kwargs)
        self.add_class("cj-panel")
        self._supersede()
        hub.subscribe(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The panel, and a note for a frontend that has lost it (see :mod:`._fallback`)."""
        note = ('<div class="cj-panel-static" style="color:var(--jp-ui-font-color2, #666);'
                'border-left:3px solid var(--jp-border-color2, #ccc);padding:2px 0 2px 6px">'
                "job monitor panel: it lived in a kernel that has restarted or stopped; run "
                "<code>%cluster panel</code> again (or open the Cluster jobs sidebar)</div>")
        return widget_bundle(self.model_id, "<clusterjupyter job monitor panel>", note)

    # -- lifetime -----------------------------------------------------------------------------
    def _supersede(self) -> None:
        """Close the panel an earlier run of this same cell displayed."""
        key = cell_key(self.shell)
        if key is None:
            return
        cell, run = key
        with _by_cell_lock:
            old = _by_cell.get(cell)
            _by_cell[cell] = (run, weakref.ref(self))
        if old is not None and old[0] != run:
            panel = old[1]()
            if panel is not None and not panel.closed:
                panel.close()

    def close(self) -> None:
        """Stop the live updates and close every widget of the panel."""
        if getattr(self, "closed", True) and getattr(self, "comm", None) is None:
            return
        self.closed = True
        hub.unsubscribe(self)
        with self.lock:
            for name in ("jobs", "profiles", "queue", "metrics"):
                tab = getattr(self, name, None)
                if tab is not None:
                    tab.close()
            for child in self.children:
                close_tree(child)
        try:
            super().close()
        except KeyError:  # see close_widget
            self.comm = None

    def _tick(self, events: set[str]) -> bool:
        if self.closed or self.comm is None:
            return False
        self.jobs.tick(events)
        return True

    # -- coordination between tabs ------------------------------------------------------------
    def _tab_changed(self, change: Any) -> None:
        if change["new"] == 2 and not self.queue.loaded:
            self.queue.refresh()
        elif change["new"] == 3:
            self.metrics.refresh()

    def profiles_changed(self) -> None:
        """The profiles file changed: refresh the profile choices of the other tabs."""
        if hasattr(self, "queue"):
            self.jobs.update_profiles()
            self.queue.update_profiles()
