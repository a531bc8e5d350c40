"""What the widgets need from the kernel: clicks that arrive while a cell blocks; the main thread.

**Clicks while the kernel is busy.** A frontend sends a button click as a ``comm_msg`` on the
shell channel. ipykernel runs shell messages on the main thread, one at a time, so while a
``%%cluster`` cell blocks in ``Waiter.run()`` a click on its cancel button would wait until the
cell ends. ipykernel 7 has *subshells* (JEP 91): extra shell threads inside the kernel. Its
shell-channel thread decides per message which (sub)shell runs it, and for a ``comm_msg`` it asks
the comm (``comm._reply_subshell_for(data, default)``, ipykernel 7.4) — so we create one subshell
for this library and route the comms of the buttons that must work during a cell (cancel, logs,
refresh, queue actions) to it. Their handlers then run on that subshell's thread while the main
thread is busy; they only start background work and return.

Kernels without that hook (ipykernel 6; 7.0–7.3 unless the frontend itself sends comm messages
to a subshell, as JupyterLab ≥ 4.4 does by default) process the click when the cell ends; the
buttons still work for ``--async`` jobs and from the panel while the kernel is idle.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_subshells: dict[int, str] = {}


def kernel_of(shell: Any) -> Any:
    """The ipykernel kernel behind ``shell`` (None in a plain IPython shell or a terminal)."""
    return getattr(shell, "kernel", None)


def _manager(kernel: Any) -> Any:
    thread = getattr(kernel, "shell_channel_thread", None)
    return getattr(thread, "manager", None)


def comm_subshell(kernel: Any, timeout: float = 5.0) -> str | None:
    """Our subshell in ``kernel`` (created on first use), or None if the kernel has none."""
    thread = getattr(kernel, "shell_channel_thread", None)
    manager = _manager(kernel)
    create = getattr(manager, "_create_subshell", None)
    loop = getattr(thread, "io_loop", None)
    if create is None or loop is None:
        return None
    with _lock:
        sid = _subshells.get(id(kernel))
        try:
            if sid is not None and sid in manager.list_subshell():
                return sid
        except Exception:
            return None
        # subshells are created on the shell-channel thread (it owns the subshell table)
        fut: concurrent.futures.Future[str] = concurrent.futures.Future()

        def make() -> None:
            try:
                fut.set_result(create())
            except BaseException as e:
                fut.set_exception(e)

        loop.add_callback(make)
        try:
            sid = fut.result(timeout)
        except Exception:
            return None
        _subshells[id(kernel)] = sid
        return sid


def route_to_subshell(widget: Any, kernel: Any) -> bool:
    """Have the kernel run ``widget``'s frontend messages on our subshell; True if it will."""
    comm = getattr(widget, "comm", None)
    if kernel is None or comm is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    sid = comm_subshell(kernel)
    if sid is None:
        return False
    manager = _manager(kernel)

    def route(data: Any, default: str | None) -> str | None:
        try:
            return sid if sid in manager.list_subshell() else default
        except Exception:
            return default

    comm._reply_subshell_for = route
    return True


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def call_when_idle(shell: Any, fn: Callable[[], Any]) -> bool:
    """Run ``fn`` on the kernel's main thread between cells; False if there is no kernel loop."""
    loop = getattr(kernel_of(shell), "io_loop", None)
    if loop is None:
        return False
    loop.add_callback(fn)
    return True


def cell_key(shell: Any) -> tuple[str, str] | None:
    """(cell id, execute request id) of the cell running now, if the frontend sent a cell id."""
    kernel = kernel_of(shell)
    get_parent = getattr(kernel, "get_parent", None)
    if get_parent is None:
        return None
    try:
        parent = get_parent()
    except Exception:
        return None
    cell = (parent.get("metadata") or {}).get("cellId")
    msg_id = (parent.get("header") or {}).get("msg_id")
    if not cell or not msg_id:
        return None
    return str(cell), str(msg_id)


class _BusyKeeper:
    """Keeps the frontend's kernel status "busy" while a cell runs.

    A frontend shows the state of the last ``status`` message on IOPub, whatever request it
    answers. Messages handled on a subshell (JupyterLab ≥ 4.4 sends widget comm messages there,
    and asks for the subshell with a control request when the first widget appears) end with
    ``idle`` even though the main shell is still running a cell: the first ``%%cluster`` cell,
    whose status line is the kernel's first widget, showed "Idle" for its whole run. While a
    cell runs, each such ``idle`` is followed here by a ``busy`` for the running cell.

    It is installed by ``%load_ext clusterjupyter``, before any widget of ours exists: installed
    by the first status line instead, it came too late whenever the frontend's subshell request
    (sent when the kernel's first comm appears) was answered before the line was built.
    """

    def __init__(self, shell: Any, kernel: Any):
        self.kernel = kernel
        self.cell: dict | None = None
        self._original = kernel._publish_status
        kernel._publish_status = self._publish_status
        shell.events.register("pre_run_cell", self._pre)
        shell.events.register("post_run_cell", self._post)

    def _pre(self, *args: Any) -> None:
        self.cell = self.kernel.get_parent("shell") or None

    def _post(self, *args: Any) -> None:
        self.cell = None

    def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
        self._original(status, channel, parent)
        cell = self.cell
        # the cell's own "idle" comes after post_run_cell (cell is None by then): any other
        # "idle" while it runs answered a subshell or control request
        if status == "idle" and cell is not None:
            try:
                self._original("busy", "shell", cell)
            except Exception:
                pass


def keep_busy_while_running(shell: Any) -> None:
    """Install :class:`_BusyKeeper` in ``shell``'s kernel (once; from a cell or at startup)."""
    kernel = kernel_of(shell)
    if kernel is None or not hasattr(kernel, "_publish_status"):
        return
    with _lock:
        keeper = getattr(kernel, "_clusterjupyter_busy", None)
        if keeper is None:
            keeper = kernel._clusterjupyter_busy = _BusyKeeper(shell, kernel)
    if keeper.cell is None:  # (called from the cell that is running now, if any)
        keeper.cell = kernel.get_parent("shell") or None

