"""Schedulers: how a job is queued and watched. One module per scheduler; shared logic in base.

One registry: the ``clusterjupyter.schedulers`` entry points (the built-ins are declared in
the project's ``pyproject.toml`` like any third-party scheduler). A scheduler is one class,
usually one small module: see :mod:`.base` for the contract.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import ProfileError
from .base import JobSpec, NativeStatus, QueueEntry, Scheduler, SchedulerError, final_state

GROUP = "clusterjupyter.schedulers"

_found: dict[str, str] | None = None


def available() -> dict[str, str]:
    """Installed schedulers: lower-case name -> ``"module:Class"``, from the entry points.

    Read once per process: scanning the installed distributions takes ~20 ms, and every
    ``%%cluster`` cell reads the profiles."""
    global _found
    if _found is None:
        _found = {ep.name.lower(): ep.value for ep in entry_points(group=GROUP)}
    return dict(_found)


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class registered as ``name`` (case-insensitive)."""
    table = available()
    target = table.get(name.strip().lower())
    if target is None:
        installed = ", ".join(sorted(table)) or "none (is clusterjupyter installed?)"
        raise ProfileError(f"unknown scheduler {name!r}; installed: {installed}",
                           field="scheduler")
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ProfileError(f"scheduler {name!r} cannot be loaded: {e}", field="scheduler") from e


__all__ = ["JobSpec", "NativeStatus", "QueueEntry", "Scheduler", "SchedulerError", "available",
           "final_state", "scheduler_class"]
