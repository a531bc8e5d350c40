"""``check_profile``: a real health check of a profile (the panel's "Test connection").

It exercises the path a job takes, in order, and stops at the first step that fails:

1. ``backend`` — build the backend and ``prepare()`` it: connect (SSH), create the work root,
   place the secret, ship the runner;
2. ``python`` — run the profile's interpreter (after its prelude and environment) with
   ``import dill, sys; print(sys.version)`` through the transport;
3. ``scheduler`` — run the scheduler's queue command (``squeue``, ``qstat``, ``ps`` …);
4. ``environment`` — the jobs' interpreter's versions against this Python (a table under
   ``"environment"``) and whether a synced environment is current (:mod:`..envsync`).

Nothing is submitted. Library code (no widgets): the magics or the server may use it as well.
"""

from __future__ import annotations

import platform
import shlex
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ..errors import ClusterError
from ..profiles import Profile, get_profile

PYTHON_CHECK = ("import dill, sys; print(sys.version.split()[0]); "
                "print('dill', dill.__version__); print(sys.executable)")


def check_profile(profile: Profile | str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Check that jobs can run on ``profile`` (a name, a Profile, or None for the default).

    Returns ``{"profile", "ok", "message", "seconds", "steps"}`` where each step is
    ``{"name", "ok", "seconds", "detail"}``. Never raises for a failing cluster: the failure
    is the answer.
    """
    from ..backends import backend_for

    t0 = time.perf_counter()
    steps: list[dict[str, Any]] = []
    if not isinstance(profile, Profile):
        try:
            profile = get_profile(profile)
        except ClusterError as e:
            return _answer(str(profile), steps, t0, f"{e}")
    state: dict[str, Any] = {}

    def backend_step() -> str:
        backend = backend_for(profile)
        backend.prepare()
        state["backend"] = backend
        return f"{backend.transport.where}: work root {backend.root}"

    def python_step() -> str:
        backend = state["backend"]
        lines = list(profile.prelude)
        lines += [f"export {k}={shlex.quote(v)}" for k, v in profile.env.items()]
        lines.append(f'exec {profile.interpreter} -c "$1"')
        done = backend.transport.shell("\n".join(lines), PYTHON_CHECK, check=False,
                                       timeout=timeout)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ClusterError(f"{profile.interpreter} failed (exit code {done.returncode}): "
                               + " | ".join(detail))
        out = done.stdout.strip().splitlines()
        return ", ".join(out[:3])

    def scheduler_step() -> str:
        backend = state["backend"]
        try:
            entries = backend.scheduler.queue()
        except ClusterError as e:
            if "has no queue" in str(e):
                return f"{backend.scheduler.name}: no queue command to check"
            raise
        n = len(entries)
        return f"{backend.scheduler.name} answered: {n} job{'s' if n != 1 else ''} in the queue"

    def environment_step() -> str:
        from ..envsync import health

        line, state["environment"] = health(state["backend"])
        return line

    for name, step in (("backend", backend_step), ("python", python_step),
                       ("scheduler", scheduler_step), ("environment", environment_step)):
        if not _run(name, step, steps):
            break
    failed = [s for s in steps if not s["ok"]]
    message = (f"{failed[0]['name']} failed: {failed[0]['detail']}" if failed
               else f"ok: {steps[1]['detail'].split(',')[0]} with dill; {steps[2]['detail']}")
    answer = _answer(profile.name, steps, t0, message if failed else None, message)
    if "environment" in state:
        answer["environment"] = state["environment"]
    return answer


def _run(name: str, fn: Callable[[], str], steps: list[dict[str, Any]]) -> bool:
    t = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as e:
        detail, ok = f"{type(e).__name__}: {e}", False
    steps.append({"name": name, "ok": ok, "seconds": round(time.perf_counter() - t, 3),
                  "detail": detail})
    return ok


def _answer(name: str, steps: list[dict[str, Any]], t0: float, error: str | None,
            message: str = "") -> dict[str, Any]:
    from ..metrics import collect

    try:
        figures = collect().get(name)
        metrics = figures.to_json() if figures is not None else {}
    except ClusterError as e:  # a journal that cannot be read is reported, not raised
        metrics = {"error": str(e)}
    return {"profile": name, "ok": error is None and bool(steps), "message": error or message,
            "seconds": round(time.perf_counter() - t0, 3), "steps": steps,
            "versions": {"clusterjupyter": _version(), "python": platform.python_version()},
            "errors": metrics.get("errors", 0), "metrics": metrics}


def _version() -> str:
    try:
        return metadata.version("clusterjupyter")
    except metadata.PackageNotFoundError:
        return "unknown"
