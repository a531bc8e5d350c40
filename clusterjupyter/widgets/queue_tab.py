"""The panel's Queue tab: a scheduler's own queue for this user, with cancel / hold / release.

The queue is read when the user asks (opening the tab, "refresh", after an action) — never on
a timer: the panel does not poll schedulers. Every scheduler call runs in a worker thread and
its errors are shown in the tab, never raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..errors import ClusterError
from ..journal import JobRecord
from ..schedulers import QueueEntry
from . import _html as H
from ._kernel import route_to_subshell
from ._live import Background, close_tree, hub

if TYPE_CHECKING:
    from .panel import Panel

COLUMNS = "6em minmax(6em,2fr) 6em 8.5em 6em minmax(5em,1fr) minmax(6em,2fr)"
HEADERS = ("job id", "name", "user", "state", "time", "partition", "reason")
BUTTON = W.Layout(width="5em", flex="0 0 5em", margin="0 1px", padding="0")


def _entry_html(q: QueueEntry, rec: JobRecord | None) -> str:
    name = f"{rec.name} ({rec.id[:8]})" if rec is not None else q.name
    where = " ".join(x for x in (q.partition, q.nodes) if x)
    cells = [H.titled(q.native_id, q.native_id, code=True),
             H.titled(name, f"{q.name}\njournal job: {rec.id if rec else '-'}"),
             H.esc(q.user), H.badge(q.state) + (f' <small>{H.esc(q.native)}</small>'
                                                 if q.native.lower() != q.state.value else ""),
             H.esc(q.elapsed), H.titled(where, where), H.titled(q.reason, q.reason)]
    return H.grid(cells, COLUMNS)


class QueueTab:
    def __init__(self, panel: Panel):
        self.panel = panel
        self.entries: list[QueueEntry] = []
        self.rows: list[W.HBox] = []
        self._reader = Background("queue-read")
        self._actions = Background("queue-action")
        self.loaded = False
        self.profile = W.Dropdown(options=[], description="profile",
                                  layout=W.Layout(width="16em"))
        self.all_users = W.Checkbox(value=False, description="all users", indent=False,
                                    layout=W.Layout(width="auto"))
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       layout=W.Layout(width="auto"))
        self.refresh_button.on_click(lambda _b: self.refresh())
        route_to_subshell(self.refresh_button, panel.kernel)
        self.profile.observe(self._choice_changed, "value")
        self.all_users.observe(self._choice_changed, "value")
        self.message = W.HTML()
        header = W.HBox([W.HTML(H.grid([H.esc(h) for h in HEADERS], COLUMNS, header=True),
                                layout=W.Layout(flex="1 1 auto", min_width="0",
                                                overflow="hidden")),
                         W.Box(layout=W.Layout(width="calc(15em + 6px)", flex="0 0 auto"))],
                        layout=W.Layout(border_bottom=f"2px solid {H.BORDER}"))
        self.table = W.VBox([], layout=W.Layout(max_height="26em", overflow="auto"))
        self.widget = W.VBox([
            W.HBox([self.profile, self.all_users, self.refresh_button],
                   layout=W.Layout(align_items="center")),
            header, self.table, self.message])
        self.update_profiles()

    def update_profiles(self) -> None:
        from ..profiles import default_profile_name, load_profiles

        try:
            names = list(load_profiles())
            default = default_profile_name()
        except Exception as e:
            self.say(f"profiles: {e}", "error")
            return
        with self.panel.lock:
            if list(self.profile.options) != names:
                current = self.profile.value
                self.profile.options = names
                want = current if current in names else default
                self.profile.value = want if want in names else (names[0] if names else None)

    def _choice_changed(self, _change: Any) -> None:
        if self.loaded:  # read once the user has looked at the tab
            self.refresh()

    def say(self, text: str, kind: str = "info") -> None:
        with self.panel.lock:
            self.message.value = H.message(text, kind)

    # -- reading ------------------------------------------------------------------------------
    def refresh(self, note: str = "") -> bool:
        """Read the queue of the chosen profile (in a worker thread); ``note`` is kept above
        the count."""
        name = self.profile.value
        if not name:
            return False
        self.loaded = True
        all_users = self.all_users.value
        self.say(f"reading the queue of {name}…")

        def work() -> None:
            from ..backends import backend_for

            from ..jobs import queue

            listed = queue(backend_for(name), all_users)
            self._render(name, [q for q, _ in listed],
                         {q.native_id: r for q, r in listed if r is not None}, note)

        def failed(e: BaseException) -> None:
            with self.panel.lock:
                if self.profile.value == name:  # no stale rows of another profile
                    self._render(name, [], {})
            self.say(f"cannot read the queue of {name}: {type(e).__name__}: {e}", "error")

        return self._reader.submit(work, on_error=failed, coalesce=True)

    def _render(self, name: str, entries: list[QueueEntry], ours: dict[str, JobRecord],
                note: str = "") -> None:
        with self.panel.lock:
            if self.profile.value != name:
                return
            for row in self.rows:
                close_tree(row)
            self.entries = entries
            self.rows = [self._row(name, q, ours.get(q.native_id)) for q in entries]
            self.table.children = tuple(self.rows)
            n = len(entries)
            count = (f"{n} job{'s' if n != 1 else ''} in the queue of {name}" if n
                     else f"the queue of {name} is empty")
            self.message.value = H.message(f"{note}; {count}" if note else count,
                                           "ok" if note else "info")

    def _row(self, profile: str, q: QueueEntry, rec: JobRecord | None) -> W.HBox:
        ours = rec.id if rec is not None else None
        html = W.HTML(_entry_html(q, rec), layout=W.Layout(flex="1 1 auto", min_width="0",
                                                            overflow="hidden"))
        buttons = []
        for action in ("cancel", "hold", "release"):
            b = W.Button(description=action, tooltip=f"{action} job {q.native_id}",
                         layout=BUTTON)
            b.on_click(lambda _b, a=action: self.act(a, profile, q.native_id, ours))
            route_to_subshell(b, self.panel.kernel)
            buttons.append(b)
        row = W.HBox([html, *buttons], layout=W.Layout(align_items="center",
                                                       border_bottom=f"1px solid {H.BORDER}"))
        row.add_class("cj-queue-row")
        return row

    # -- actions ------------------------------------------------------------------------------
    def act(self, action: str, profile: str, native_id: str, job_id: str | None = None) -> bool:
        """cancel / hold / release one queue entry through the scheduler (worker thread)."""
        if action not in ("cancel", "hold", "release"):
            raise ValueError(f"unknown queue action {action!r}")
        self.say(f"{action} {native_id}…")

        def work() -> None:
            from ..backends import backend_for
            from ..jobs import queue_action

            failed = queue_action(backend_for(profile), action, [native_id])
            if failed:
                raise ClusterError(failed[native_id])
            hub.poke()
            self._reader.wait(30)
            self.refresh(note=f"{action}: done for job {native_id} on {profile}")

        def failed(e: BaseException) -> None:
            self.say(f"{action} {native_id} on {profile} failed: {e}", "error")

        return self._actions.submit(work, on_error=failed)

    def close(self) -> None:
        for row in self.rows:
            close_tree(row)
        self.rows = []
