"""A matplotlib backend for jobs that shows figures the way the kernel's inline backend does.

The runner selects it (``MPLBACKEND=module://clusterjupyter._mpl_backend``) when the kernel
displays figures inline. ``plt.show()`` and the end of the cell display every open figure in the
formats the kernel uses (``%config InlineBackend.figure_formats``: png, retina, jpeg, svg, pdf,
with its ``print_figure_kwargs``); a figure without axes shows only its text, as in the kernel.
"""

from __future__ import annotations

from typing import Any

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import _Backend
from matplotlib.backends.backend_agg import FigureCanvasAgg, FigureManagerBase, _BackendAgg

from . import _display, context
from ._figures import figure_bundle, render  # noqa: F401  (part of this module's API)

#: what the cell did with pyplot: figures created or drawn (the inline backend's
#: ``show._draw_called``), and figures shown but left open (``close_figures = False``)
state: dict[str, Any] = {"drew": False, "shown": set()}


def display_figure(fig: Any) -> None:
    _display.publish(*figure_bundle(fig))


def flush_figures(close: bool | None = None) -> None:
    """Display every open figure (as the inline backend's ``show``) and close those shown.

    A figure that does not render (a LaTeX label without LaTeX) is neither shown nor closed:
    it stays open, goes back with the cell's result into the kernel's pyplot, and the kernel's
    own inline backend renders it after the cell, failing in its own form (its post-execute
    error, then the figure's text)."""
    import matplotlib.pyplot as plt

    if close is None:
        close = context.inline_settings()["close_figures"]
    shown = []
    for manager in Gcf.get_all_fig_managers():
        fig = manager.canvas.figure
        try:
            bundle = figure_bundle(fig)
        except Exception:
            continue
        _display.publish(*bundle)
        shown.append(manager)
        state["drew"] = True
    for manager in shown:
        if close:
            plt.close(manager.canvas.figure)
        else:
            state["shown"].add(id(manager.canvas.figure))


def take_open() -> list[Any]:
    """The figures still open in this job that it did not show (under a backend that only
    writes files, or a figure that did not render): what the kernel's pyplot would still hold
    after the cell. They leave the job's pyplot, so that they travel as plain figures and the
    kernel registers them with its own (:func:`clusterjupyter.writeback.adopt_figures`)."""
    import matplotlib.pyplot as plt

    figures = [m.canvas.figure for m in Gcf.get_all_fig_managers()
               if id(m.canvas.figure) not in state["shown"]]
    for fig in figures:
        plt.close(fig)
    return figures


@_Backend.export
class _BackendJob(_BackendAgg):
    FigureCanvas = FigureCanvasAgg
    FigureManager = FigureManagerBase

    @staticmethod
    def show(*args: object, **kwargs: object) -> None:
        close = kwargs.get("close")
        flush_figures(None if close is None else bool(close))

    @staticmethod
    def draw_if_interactive() -> None:
        state["drew"] = True  # figures are drawn once, when they are shown
