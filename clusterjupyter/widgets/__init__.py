"""The job monitor UI (ipywidgets 8, no custom JavaScript).

* :class:`Panel` — ``%cluster panel``: Jobs / Profiles / Queue tabs, live.
* :class:`JobStatus` — the live status of a ``%%cluster`` cell, the status display the
  extension gives the magics (a widget while the job runs, static HTML once it ends; a text
  line without a kernel).
* :func:`check_profile` — the health check behind "Test connection".

Widgets never poll schedulers: they re-read the journal from one background thread and follow
the monitors' events (see :mod:`clusterjupyter.widgets._live`).
"""

from .health import check_profile
from .panel import Panel
from .status import JobStatus

__all__ = ["JobStatus", "Panel", "check_profile"]
