"""clusterjupyter: run a notebook cell on a cluster as if it ran in the kernel.

``%load_ext clusterjupyter`` registers ``%%cluster`` and ``%cluster``. Importing this package is
cheap (the runner imports it on the cluster): everything else is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Job": ("clusterjupyter.jobs", "Job"),
    "JobState": ("clusterjupyter.states", "JobState"),
    "Panel": ("clusterjupyter.widgets", "Panel"),
    "RemoteError": ("clusterjupyter.errors", "RemoteError"),
    "CaptureError": ("clusterjupyter.errors", "CaptureError"),
    "JobFailedError": ("clusterjupyter.errors", "JobFailedError"),
    "api": ("clusterjupyter.api", None),
}

__all__ = ["load_ipython_extension", "unload_ipython_extension", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'clusterjupyter' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext clusterjupyter``: register the magics."""
    from .magics import ClusterMagics

    ipython.register_magics(ClusterMagics(ipython, status_display=_status_display))
    if getattr(ipython, "kernel", None) is not None:
        # before the first widget: the frontend's subshell requests it causes must not leave
        # the kernel's status on "idle" while a cell runs
        from .widgets._kernel import keep_busy_while_running

        keep_busy_while_running(ipython)


def _status_display(shell: Any, record: Any) -> Any:
    """The live status of a submitted cell: the widget front end (imported on first use)."""
    from .widgets import JobStatus

    return JobStatus(shell, record)


def unload_ipython_extension(ipython: Any) -> None:
    pass


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The Jupyter server extension (REST routes for the sidebar)."""
    return [{"module": "clusterjupyter.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab sidebar shipped in the package."""
    from .server import _jupyter_labextension_paths as paths

    return paths()
