"""A matplotlib backend for jobs: figures become PNG outputs of the notebook cell.

The runner selects it with ``MPLBACKEND=module://clusterjupyter._mpl_backend``; ``plt.show()``
and the end of the cell send every open figure to the cell, like the inline backend does.
"""

from __future__ import annotations

import io

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import _Backend
from matplotlib.backends.backend_agg import FigureCanvasAgg, FigureManagerBase, _BackendAgg

from . import _display


def flush_figures() -> None:
    """Send every open figure to the cell as a PNG and close it."""
    import matplotlib.pyplot as plt

    for manager in Gcf.get_all_fig_managers():
        fig = manager.canvas.figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        _display.publish({"image/png": _display._jsonable("image/png", buf.getvalue()),
                          "text/plain": repr(fig)})
    plt.close("all")


@_Backend.export
class _BackendJob(_BackendAgg):
    FigureCanvas = FigureCanvasAgg
    FigureManager = FigureManagerBase

    @staticmethod
    def show(*args: object, **kwargs: object) -> None:
        flush_figures()
