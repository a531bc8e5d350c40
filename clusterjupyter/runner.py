"""Run one job directory: ``python -m clusterjupyter.runner JOBDIR``.

Executed on the cluster (or locally) by whatever the scheduler starts. It

1. records that it started (``started.json``: host, pid, scheduler job id);
2. sends the cell's stdout/stderr (file descriptors 1 and 2, so subprocesses and C code too) to
   the job's ``stdout``/``stderr`` files as they are written;
3. verifies the manifest and every input blob against the per-user secret, then restores inputs
   (:mod:`._inputs`);
4. runs the cell with IPython's semantics (:mod:`._jobshell`): the last expression is the cell's
   value, ``display()`` and matplotlib figures become rich outputs, ``!cmd`` works;
5. finds what the cell bound, deleted, or mutated in place (digest of each input before/after),
   and writes each value back as its own signed blob, then ``result.json`` (:mod:`._outputs`);
6. writes ``state.json`` last, signed and atomically (:mod:`._exitfile`): the job's final state
   never depends on scheduler accounting.

The data goes one way, through those modules in that order; none of them imports this one.
Only the standard library and this package's runtime modules are imported up front; dill is
imported when a value needs it. The runner never imports the kernel side of the package.
"""

from __future__ import annotations

import builtins
import os
import signal
import socket
import sys
import time
import traceback
import types
from typing import Any

from . import _display, bundle, context, serialize
from ._exitfile import Exit, Outcome, decide, write_exit
from ._inputs import import_modules, load_manifest, restore_inputs, secret_path
from ._jobshell import KERNEL_STATE_MAGICS, JobShell, Terminated, on_signal, \
    patch_ipython_display, pyplot_state, run_cell
from ._outputs import EXCEPTION_KEY, FIGURES_KEY, RESULT_KEY, Changes, cell_frames, changes, \
    input_digests, write_result
from ._workdir import Workdir
from .jobdir import JobPaths, write_json_atomic

__all__ = ["EXCEPTION_KEY", "FIGURES_KEY", "KERNEL_STATE_MAGICS", "RESULT_KEY", "SCHEDULER_ENV",
           "Runner", "Terminated", "cell_frames", "main"]

SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_CPUS_ON_NODE", "JOB_ID",
                 "PBS_JOBID", "HOSTNAME", "KUBERNETES_SERVICE_HOST",
                 # a sweep's job array: which array, which element
                 "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SGE_TASK_ID", "PBS_ARRAY_INDEX",
                 "PBS_ARRAYID")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)


def _redirect(fd: int, path: str) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, fd)
    os.close(target)


class Runner:
    """One run of one job directory: the state its steps hand on to each other."""

    def __init__(self, job_dir: str):
        self.paths = JobPaths.from_dir(os.path.abspath(job_dir))
        self.started = time.time()
        self.module = types.ModuleType("__main__")
        self.ns: dict[str, Any] = self.module.__dict__
        self.shell = JobShell(self.module)
        self.inputs: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}
        self.key = b""
        self.workdir: Workdir | None = None

    @property
    def filename(self) -> str:
        """The cell's file name: the one the kernel gave it, so tracebacks and warnings name
        the cell as the kernel does."""
        return self.manifest.get("filename") or f"<cluster-cell-{self.paths.job_id[:8]}>"

    def start(self) -> None:
        """Say the job started, and send fds 1 and 2 and the displays to the job's files."""
        write_json_atomic(self.paths.started, {
            "host": socket.gethostname(), "pid": os.getpid(), "time": self.started,
            "python": sys.version.split()[0],
            "env": {k: os.environ[k] for k in SCHEDULER_ENV if k in os.environ}})
        _redirect(1, self.paths.stdout)
        _redirect(2, self.paths.stderr)
        sys.stdout = _display.Stream(  # type: ignore[assignment]
            "stdout", open(1, "w", buffering=1, closefd=False, errors="backslashreplace"))
        sys.stderr = _display.Stream(  # type: ignore[assignment]
            "stderr", open(2, "w", buffering=1, closefd=False, errors="backslashreplace"))
        os.environ["MPLBACKEND"] = context.JOB_BACKEND
        _display.sink = open(self.paths.displays, "a", buffering=1, encoding="utf-8")

    def load_manifest(self) -> None:
        self.key, self.manifest = load_manifest(self.paths)

    def restore(self) -> None:
        """The kernel's settings, then the cell's module with its modules and inputs."""
        context.apply(self.manifest.get("context") or {})
        sys.modules["__main__"] = self.module
        self.ns["__builtins__"] = builtins
        builtins.display = _display.display  # type: ignore[attr-defined]
        self.ns["get_ipython"] = lambda: self.shell
        import_modules(self.manifest.get("modules", {}), self.ns)
        self.inputs = restore_inputs(self.manifest, self.key, self.paths, self.module)
        if "IPython" in self.manifest["cell"] or "IPython" in sys.modules:
            patch_ipython_display()

    def dump_options(self) -> serialize.DumpOptions:
        # notebook classes, from the kernel or defined by the cell, travel once by value (as
        # names of their own) and are referenced from every other value
        return serialize.DumpOptions(main=self.module,
                                     class_ref=serialize.main_class_ref(self.ns))

    def digest(self, value: Any) -> str | None:
        return serialize.state_digest(value, self.dump_options())

    def what_changed(self, before: dict[str, str | None]) -> Changes:
        """What the cell did to its namespace (:func:`._outputs.changes`)."""
        real = self.shell._real
        injected = getattr(real, "user_ns_hidden", {}) if real is not None else {}
        return changes(self.ns, self.inputs, before, self.digest, injected,
                       self.manifest.get("deleted", []))

    def findings(self, settings_before: dict[str, Any]) -> dict[str, Any]:
        """What the result says besides values: magics to replay in the kernel, the settings
        the cell changed, the files it created or changed."""
        found: dict[str, Any] = {}
        if self.shell.kernel_magics:
            found["kernel_magics"] = self.shell.kernel_magics
        try:
            found["settings"] = context.changes(settings_before)
        except Exception as e:  # settings that cannot be read must not lose the result
            print(f"clusterjupyter: the cell's settings stay in the job: {e}", file=sys.stderr)
        if self.workdir is not None:
            found.update(self.workdir.collect())
        return found

    def run(self) -> Outcome:
        """Every step up to the result; what happened, for the exit file."""
        phase = "verifying the job"
        try:
            self.load_manifest()
            phase = "entering the working directory"
            self.workdir = Workdir.enter(self.manifest, self.paths, self.key)
            phase = "restoring inputs"
            self.restore()
            if self.workdir is not None:
                self.workdir.patch_inputs(self.inputs, self.ns)
            before = input_digests(self.inputs, self.digest)
            nested, _kept = bundle.nested_refs(self.inputs)  # the objects inside, before
            phase = "running the cell"
            settings_before = context.snapshot()
            last, has_last, exc = run_cell(self.manifest["cell"], self.filename,
                                           bool(self.manifest.get("has_result")), self.ns)
            phase = "sending results"
            figures, drew = pyplot_state()
            found = self.findings(settings_before)
            if drew:
                found["drew"] = True
            write_result(self.paths, self.key, self.dump_options(), self.inputs,
                         self.what_changed(before), last, has_last, exc, self.filename, found,
                         figures, nested)
        except Terminated as t:
            return Outcome(signum=t.signum, phase=phase)
        except BaseException as e:
            traceback.print_exc()
            return Outcome(internal=e, phase=phase)
        return Outcome(cell_error=exc)

    def write_state(self, verdict: Exit) -> None:
        write_exit(self.paths, self.key, verdict, self.started, secret_path())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m clusterjupyter.runner JOBDIR", file=sys.stderr)
        return 2
    runner = Runner(argv[0])
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    runner.start()
    verdict = decide(runner.run())
    runner.write_state(verdict)
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
