"""The kernel's side of ``%%cluster --sweep``: parse, submit, one live progress line, then
every finished element's names bound as one object each, and a summary.

A failed element never hides the others: the cell raises only when every element failed.
"""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.error import UsageError

from . import sweep as sweepmod
from . import sweeps
from .errors import ClusterError
from .failure import explain
from .options import count_option


class SweepFailedError(ClusterError):
    """Every element of a sweep failed (the message is the sweep's summary)."""


class _Line:
    """One live progress line: a display updated in place (a notebook), else ``\\r``."""

    def __init__(self, first: str = "") -> None:
        self.handle: Any = None
        self.last = first
        try:
            from IPython import get_ipython

            kernel = getattr(get_ipython(), "kernel", None)
        except ImportError:
            kernel = None
        if kernel is not None:
            from IPython.display import Pretty, display

            self.handle = display(Pretty(first), display_id=True)
            self._pretty = Pretty
        elif first:
            sys.stdout.write("\r" + first)
            sys.stdout.flush()

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.handle is not None:
            self.handle.update(self._pretty(text))
        else:
            sys.stdout.write("\r" + text)
            sys.stdout.flush()

    def close(self) -> None:
        if self.handle is None and self.last:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _whole(option: str, text: str | None, default: int) -> int:
    return default if text is None else count_option(option, text)


def run_sweep(magics: Any, backend: Any, args: Any, cell: str) -> Any:
    """``%%cluster … --sweep "NAME in EXPR"``: submit the sweep, follow it, bind results."""
    __tracebackhide__ = True
    shell = magics.shell
    if not backend.scheduler.array_index:
        raise UsageError(f"profile {backend.name}: the {backend.scheduler.name} scheduler has "
                         "no job arrays for sweeps (sweeps run on local, ssh, slurm, sge, "
                         "pbs and kubernetes profiles); nothing was submitted")
    limit = _whole("--max-elements", args.max_elements, sweepmod.MAX_ELEMENTS)
    local = backend.scheduler.name == "local"
    max_running = _whole("--max-running", args.max_running,
                         sweeps.default_max_running() if local else 0)
    try:
        axes = sweepmod.parse_axes(args.sweep)
        params = sweepmod.elements(axes, lambda expr: eval(expr, shell.user_ns), args.zip,
                                   limit)
    except sweepmod.SweepError as e:
        raise UsageError(str(e)) from None
    # the swept names are the element's own: never taken from the kernel
    args.skip = list(args.skip) + [a.name for a in axes]
    sub, analysis = magics._submission(args, cell)
    sub.workdir = magics._workdir(backend, args, sub, analysis)
    if args.dry_run:
        print(f"# sweep over {', '.join(a.name for a in axes)}: {len(params)} elements, "
              f"one job array on {backend.name}")
        print(f"# inputs shared by every element: {', '.join(sub.packed.names) or '-'}")
        print(f"# outputs per element: {', '.join(analysis.outputs) or '-'}")
        return None
    try:
        sw = sweeps.submit(backend, sub, params, [a.name for a in axes], max_running,
                           shell.user_module)
    except ClusterError as e:
        raise UsageError(f"submission to {backend.name} failed: {e}") from None
    sw.namespace = (shell.user_ns, shell.user_module)
    sw.has_result = analysis.has_result
    if args.job:
        shell.user_ns[args.job] = sw
    if args.async_:
        return sw
    return follow(shell, sw)


def follow(shell: Any, sw: sweeps.Sweep) -> Any:
    """Show the live progress line until every element ends; then bind and summarize."""
    __tracebackhide__ = True
    line = _Line(sweepmod.progress_line(sw.counts(), _elapsed(sw)))
    try:
        sw.wait(on_tick=lambda c: line.show(sweepmod.progress_line(
            c, _elapsed(sw))))
    except KeyboardInterrupt:
        line.close()
        print(f"interrupted: cancelling sweep {sw.id[:8]}", file=sys.stderr)
        sw.cancel()
        raise
    line.close()
    return finish(shell, sw)


def _elapsed(sw: sweeps.Sweep) -> float:
    import time

    return time.time() - float(sw.record["created"])


def finish(shell: Any, sw: sweeps.Sweep) -> Any:
    """Bind each name the cell binds (one object over the finished elements), print the
    summary, raise only when every element failed; return the elements' values when the
    cell ends with an expression."""
    __tracebackhide__ = True
    results = sw.results()
    shell.user_ns.update(results)
    c = sw.counts()
    print(sw.summary())
    if results:
        print(f"bound: {', '.join(results)} (one entry per completed element)")
    if c.done == 0 and c.failed:
        raise SweepFailedError(sw.summary())
    if getattr(sw, "has_result", False):
        values = sw.values()
        return values
    return None


def element_line(index: int, params: dict[str, Any], rec: Any) -> str:
    """One element of ``%cluster sweep ID``: index, state, native id, parameters and, for
    one that did not complete, the first line of why (pure)."""
    p = ", ".join(f"{k}={v!r}" for k, v in params.items())
    why = ""
    if rec.state.final and not rec.state.ok:
        why = (explain(rec, rec.error or {}).strip().splitlines() or [""])[0]
    elif rec.reason:
        why = rec.reason.strip().splitlines()[0]
    return (f"  {index:>5}  {rec.state.value:<13} {rec.native_id or '-':<14} {p}"
            + (f"  {why[:100]}" if why else ""))


def show_sweep(ref: str) -> sweeps.Sweep:
    """``%cluster sweep ID``: each element's state, native id, parameters and first error
    line."""
    sw = sweeps.find(ref)
    if sw is None:
        raise UsageError(f"no sweep {ref!r} in the journal (%cluster jobs lists jobs)")
    sw.backend.refresh([e.job.record for e in sw.elements if not e.done])
    print(f"sweep {sw.id} ({sw.name}) on {sw.backend.name}, arrays: "
          f"{', '.join(sw.array_ids) or '-'}")
    print(sw.progress())
    print(f"  {'INDEX':>5}  {'STATE':<13} {'NATIVE':<14} PARAMETERS  WHY")
    for e in sw.elements:
        print(element_line(e.index, e.params, e.job.record))
    return sw


def sweep_result(magics: Any, ref: str) -> Any:
    """``%cluster result ID`` for a sweep (None if ``ref`` names no sweep): everything
    finished so far, bound as the cell would have bound it."""
    __tracebackhide__ = True
    sw = sweeps.find(ref)
    if sw is None:
        return None
    shell = magics.shell
    sw.namespace = (shell.user_ns, shell.user_module)
    sw.backend.refresh([e.job.record for e in sw.elements if not e.done])
    return finish(shell, sw)
