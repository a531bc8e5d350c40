"""Schedulers: how a job is queued and watched. One module per scheduler; shared logic in base."""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import ProfileError
from .base import JobSpec, NativeStatus, QueueEntry, Scheduler, final_state

GROUP = "clusterjupyter.schedulers"

_BUILTIN = {
    "local": "clusterjupyter.schedulers.local:LocalScheduler",
    "slurm": "clusterjupyter.schedulers.slurm:SlurmScheduler",
    "pbs": "clusterjupyter.schedulers.pbs:PBSScheduler",
    "sge": "clusterjupyter.schedulers.sge:SGEScheduler",
    "kubernetes": "clusterjupyter.schedulers.kubernetes:KubernetesScheduler",
}


_found: dict[str, str] | None = None


def available() -> dict[str, str]:
    """Scheduler name -> "module:Class", from entry points (built-ins if not installed).

    Read once per process: scanning the installed distributions takes ~20 ms, and every
    ``%%cluster`` cell reads the profiles."""
    global _found
    if _found is None:
        found = dict(_BUILTIN)
        for ep in entry_points(group=GROUP):
            found[ep.name.lower()] = ep.value
        _found = found
    return dict(_found)


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class registered as ``name`` (case-insensitive)."""
    import importlib

    table = available()
    target = table.get(name.strip().lower())
    if target is None:
        raise ProfileError(f"unknown scheduler {name!r}; available: {', '.join(sorted(table))}",
                           field="scheduler")
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ProfileError(f"scheduler {name!r} cannot be loaded: {e}", field="scheduler") from e


__all__ = ["JobSpec", "NativeStatus", "QueueEntry", "Scheduler", "available", "final_state",
           "scheduler_class"]
