"""Applying a job's verified result to the kernel's namespace: the one place it is done.

Names the cell bound are bound (objects it shared arrive shared, and inputs it merely referred to
are the kernel's own objects); names it deleted are deleted; and inputs it mutated in place are
mutated in place here too: the new state is written *into the kernel's existing object*, so
every other name for it, and every numpy view of it, sees the change as after the same cell in
the kernel. An object that cannot be updated in place (another type, an array whose shape
changed) is rebound instead. Names that could not come back are named in one warning.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from . import context
from .inplace import update_in_place
from .payload import JobResult


class UnpicklableOutputWarning(UserWarning):
    """Some names bound by the cell could not be sent back (the others were)."""


def apply(result: JobResult, namespace: dict) -> list[str]:
    """Push a job's values into ``namespace``: mutate, bind, delete. Returns what changed."""
    in_place = set()
    for name in result.mutated:
        if name in result.values and name in namespace \
                and update_in_place(namespace[name], result.values[name]):
            result.values[name] = namespace[name]
            in_place.add(name)
    namespace.update({n: v for n, v in result.values.items() if n not in in_place})
    for name in result.deleted:
        namespace.pop(name, None)
    try:
        context.apply_changes(result.settings)
    except Exception as e:
        print(f"clusterjupyter: settings the cell changed could not be taken here: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
    if result.figures:
        try:
            adopt_figures(result.figures)
        except Exception as e:
            print(f"clusterjupyter: the figures the job left open stay out of this kernel's "
                  f"pyplot: {type(e).__name__}: {e}", file=sys.stderr)
    if result.warnings:
        lines = "; ".join(f"{n}: {why}" for n, why in result.warnings.items())
        warnings.warn_explicit(
            f"not sent back from the cluster (the other names were): {lines}",
            UnpicklableOutputWarning, filename=f"<cluster-cell-{result.job_id[:8]}>", lineno=1)
    return [*result.values, *(f"del {n}" for n in result.deleted)]


def adopt_figures(figures: list[Any]) -> None:
    """Figures a job left open join this kernel's pyplot (after the job's settings, so under
    the backend the cell left), as matplotlib does for a pickled pyplot figure: the kernel's
    inline backend then shows them after the cell, as it shows the cell's own."""
    import matplotlib.pyplot as plt
    from matplotlib import _pylab_helpers

    managed = set(_pylab_helpers.Gcf.figs.values())
    for fig in figures:
        if getattr(fig.canvas, "manager", None) in managed:
            continue  # the kernel's own figure, an input of the cell
        nums = plt.get_fignums()
        manager = plt._get_backend_mod().new_figure_manager_given_figure(
            max(nums) + 1 if nums else 1, fig)
        _pylab_helpers.Gcf._set_new_active_manager(manager)
        plt.draw_if_interactive()
