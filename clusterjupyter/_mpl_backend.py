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

def display_figure(fig: Any) -> None:
    _display.publish(*figure_bundle(fig))


def flush_figures(close: bool | None = None) -> None:
    """Display every open figure (as the inline backend's ``show``) and close them."""
    import matplotlib.pyplot as plt

    if close is None:
        close = context.inline_settings()["close_figures"]
    for manager in Gcf.get_all_fig_managers():
        display_figure(manager.canvas.figure)
    if close and Gcf.get_all_fig_managers():
        plt.close("all")


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
        pass  # figures are drawn once, when they are shown
