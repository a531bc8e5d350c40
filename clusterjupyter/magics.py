"""``%%cluster`` and ``%cluster …``: thin IPython magics over the library.

The cell magic lives here: parse the options, build the submission, submit, wait and push the
result into the namespace. The line magic's subcommands are in :mod:`.linemagic`. Everything
else (capture, payload, backends, journal) is library code shared with the panel and the server.
"""

from __future__ import annotations

import keyword
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Unicode

from . import context, kernelcell, linemagic
from .backends import Submission, backend_for
from .capture import analyze, gather
from .errors import ClusterError, ProfileError
from .jobs import Job, PushBack, Waiter, failure, interrupted, publish_display, push, \
    register_source
from .journal import JobRecord
from .options import unknown_options, unquoted
from .payload import pack_inputs
from .resources import Resources
from .states import JobState

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

StatusFactory = Callable[[Any, JobRecord], Any]
RESOURCE_OPTIONS = ("time", "cpus", "mem", "gpus", "nodes", "partition", "account", "qos",
                    "constraint")
#: every option of %%cluster, for the error that names the valid ones
CELL_OPTIONS = [f"--{o}" for o in (*RESOURCE_OPTIONS, "directive", "name", "job", "async",
                                   "dry-run", "skip", "stage", "stage-limit", "sweep", "zip",
                                   "max-elements", "max-running")]
SUBCOMMANDS = linemagic.SUBCOMMANDS


@magics_class
class ClusterMagics(Magics):
    """Run cells on a cluster. ``%%cluster?`` and ``%cluster?`` show the options."""

    shell: InteractiveShell  # type: ignore[assignment]  # IPython's Magics declares it None

    default_profile = Unicode(
        "", config=True,
        help="Profile used by %%cluster without a name (empty: the profiles file's default, "
             "else 'local').")

    def __init__(self, shell: Any = None, status_display: StatusFactory | None = None,
                 **kw: Any):
        super().__init__(shell, **kw)
        self.pushback = PushBack(shell) if shell is not None else None
        #: builds the live status of a submitted cell (``factory(shell, record)``, with an
        #: ``update(record)`` method); given by the front end, None for no status display
        self.status_display = status_display

    # -- %%cluster --------------------------------------------------------------------------
    @magic_arguments()
    @argument("profile", nargs="?", default=None, help="cluster profile (default: see "
              "%%cluster default)")
    @argument("--time", help="time limit: minutes, H:MM:SS, or 45m / 2h / 1d")
    @argument("--cpus", help="CPU cores for the cell")
    @argument("--mem", help="memory: 500M, 4G …")
    @argument("--gpus", help="GPUs: a count or TYPE:COUNT")
    @argument("--nodes", help="number of nodes")
    @argument("--partition", help="partition / queue")
    @argument("--account", help="account to charge")
    @argument("--qos", help="quality of service")
    @argument("--constraint", help="node features")
    @argument("--directive", action="append", default=[],
              help="extra scheduler directive, verbatim (repeatable)")
    @argument("--name", help="job name (default: notebook name and cell number)")
    @argument("--job", metavar="VAR", help="bind the Job handle to this name")
    @argument("--async", dest="async_", action="store_true",
              help="return a Job at once; outputs arrive between cells when it finishes")
    @argument("--dry-run", action="store_true",
              help="show the script, inputs and outputs without submitting")
    @argument("--skip", action="append", default=[], metavar="NAME",
              help="do not send this name (repeatable)")
    @argument("--stage", action="append", default=[], metavar="PATH",
              help="send this file or directory with the job when the cluster does not see "
                   "this machine's files (repeatable)")
    @argument("--stage-limit", metavar="SIZE",
              help="most bytes staged for this cell (default: the profile's stage_limit, 1G)")
    @argument("--sweep", action="append", default=[], metavar='"NAME in EXPR"',
              help="run the cell once per value of NAME, as one job array (repeatable: every "
                   "combination)")
    @argument("--zip", action="store_true", help="pair the --sweep values instead of combining")
    @argument("--max-elements", metavar="N",
              help="most elements a sweep may have (default 10000)")
    @argument("--max-running", metavar="N",
              help="most sweep elements running at once (default: the local backend's cores; "
                   "no limit on a batch scheduler)")
    @line_cell_magic
    def cluster(self, line: str, cell: str | None = None) -> Any:
        """Run the cell on a cluster: ``%%cluster [PROFILE] [--time …] [--async] …``.

        Line form: ``%cluster SUBCOMMAND …`` (:mod:`.linemagic`: jobs, status, logs, cancel, …).
        """
        __tracebackhide__ = True
        if cell is None:
            return linemagic.run(self, line)
        args = self.cell_options(line)
        if args.job is not None and not (args.job.isidentifier()
                                         and not keyword.iskeyword(args.job)):
            raise UsageError(f"--job needs a Python name to bind the Job to, not {args.job!r}")
        here = None if args.dry_run else kernelcell.kernel_magic_lines(
            self.shell.transform_cell(cell))
        if here:   # a cell that only configures this kernel (%matplotlib inline, %load_ext)
            return kernelcell.run_in_kernel(self.shell, here)
        return self._run_cell(args, cell)

    def cell_options(self, line: str) -> Any:
        """The options of ``%%cluster LINE``, or a UsageError naming the valid ones."""
        try:
            return unquoted(parse_argstring(self.cluster, line))
        except ValueError as e:  # shlex: an unclosed quote
            raise UsageError(f"cannot read the options ({e}): {line.strip()}") from None
        except UsageError as e:
            raise UsageError(unknown_options(line, CELL_OPTIONS, str(e))) from None

    def profile_name(self, name: str | None) -> str | None:
        """The profile a cell or subcommand names, else this kernel's default (None: the
        profiles file's default)."""
        return name or self.default_profile or None

    def current_profile(self) -> str:
        from .profiles import default_profile_name

        return self.default_profile or default_profile_name()

    def _submission(self, args: Any, cell: str) -> tuple[Submission, Any]:
        shell = self.shell
        source = shell.transform_cell(cell)
        filename = kernelcell.cell_filename(shell, cell, source)
        kernelcell.check_compiles(shell, source, filename)
        try:
            analysis = analyze(source)
        except SyntaxError as e:
            raise UsageError(f"the cell is not valid Python: {e}") from None
        values = {o: getattr(args, o) for o in RESOURCE_OPTIONS}
        values["directives"] = args.directive or None
        try:
            resources = Resources.parse(values)
        except ProfileError as e:
            raise UsageError(str(e).replace("field", "option")) from None
        captured = gather(analysis, shell.user_ns, shell.user_ns_hidden, args.skip)
        kernelcell.check_magics(analysis.magics, getattr(shell.magics_manager, "magics", None))
        packed = pack_inputs(captured, shell.user_ns, shell.user_module)
        packed.extra.update(context=context.collect(), filename=filename)
        notebook = os.environ.get("JPY_SESSION_NAME", "")
        stem = os.path.splitext(os.path.basename(notebook))[0] if notebook else "cell"
        name = args.name or f"{stem}-{shell.execution_count}"
        sub = Submission(source=source, has_result=analysis.has_result, packed=packed,
                         name=name, resources=resources, outputs=analysis.outputs,
                         deleted=analysis.deleted, kernel_id=_kernel_id(shell), notebook=notebook,
                         progress=_progress_factory())
        return sub, analysis

    def _run_cell(self, args: Any, cell: str) -> Any:
        __tracebackhide__ = True
        try:
            backend = backend_for(self.profile_name(args.profile))
        except ProfileError as e:
            raise UsageError(str(e)) from None
        if args.sweep:
            from .sweepcell import run_sweep

            return run_sweep(self, backend, args, cell)
        sub, analysis = self._submission(args, cell)
        sub.workdir = self._workdir(backend, args, sub, analysis)
        if args.dry_run:
            print(f"# profile {backend.name} ({backend.scheduler.name} on "
                  f"{backend.transport.where})")
            print(f"# inputs: {', '.join(sub.packed.names) or '-'}"
                  + (f"; modules: {', '.join(sub.packed.modules)}" if sub.packed.modules else "")
                  + f" ({sub.packed.total_size} bytes)")
            if sub.packed.skipped:
                print(f"# left behind: {', '.join(sub.packed.skipped)}")
            print(f"# outputs: {', '.join(analysis.outputs) or '-'}")
            print(sub.workdir.summary())
            print(backend.script(sub))
            return None
        try:
            rec = backend.submit(sub)
        except ClusterError as e:
            raise UsageError(f"submission to {backend.name} failed: {e}") from None
        register_source(rec.id, sub.source)
        cell_id = _cell_id(self.shell)
        if cell_id:  # lets the sidebar take the user to the cell
            backend.journal.update(rec.id, cell_id=cell_id)
            rec.cell_id = cell_id
        job = Job(rec, backend)
        if args.job:
            self.shell.user_ns[args.job] = job
        status = self.status_display(self.shell, rec) if self.status_display else None
        if args.async_:
            assert self.pushback is not None
            self.pushback.watch(job, status)
            return job
        outputs = kernelcell.CellOutputs(self.shell, publish_display)
        follower = kernelcell.OrderedFollower(backend, rec, outputs)
        try:
            state = Waiter(job, follower, status).run()
        except KeyboardInterrupt:
            raise interrupted(job) from None
        try:
            return self._finish(job, state)
        finally:
            outputs.release()

    def _workdir(self, backend: Any, args: Any, sub: Submission, analysis: Any) -> Any:
        """Where the job runs and the files and local modules it takes (before submission)."""
        from .staging import StagingError, make_plan

        captured = gather(analysis, self.shell.user_ns, self.shell.user_ns_hidden, args.skip)
        try:
            return make_plan(backend.profile, sub.source, captured.values, captured.modules,
                             sub.packed.blobs, args.stage, args.stage_limit)
        except StagingError as e:
            raise UsageError(str(e)) from None

    def _finish(self, job: Job, state: JobState) -> Any:
        __tracebackhide__ = True
        rec = job.record
        if not job.backend.has_result(rec):
            raise failure(job.backend, rec)
        result, _names = push(job, self.shell.user_ns, self.shell.user_module)
        kernelcell.replay_kernel_magics(self.shell, result.kernel_magics)
        kernelcell.pyplot_drew(result.drew)
        if result.exception is not None:
            kernelcell.raise_in_cell(self.shell, result.exception)
        if result.value_bundle is not None:
            publish_display(result.value_bundle, {})
            return None
        return result.value if result.has_value else None


def _cell_id(shell: Any) -> str:
    """The id of the notebook cell being run (sent by JupyterLab / Notebook 7), or ''."""
    get_parent = getattr(getattr(shell, "kernel", None), "get_parent", None)
    if get_parent is None:
        return ""
    try:
        return str((get_parent().get("metadata") or {}).get("cellId") or "")
    except Exception:
        return ""


def _kernel_id(shell: Any = None) -> str:
    if getattr(shell, "kernel", None) is None:
        # not a Jupyter kernel: importing ipykernel here would swap the comm manager
        return f"pid-{os.getpid()}"
    try:
        from ipykernel import get_connection_file

        name = os.path.basename(get_connection_file())
        return name.removeprefix("kernel-").removesuffix(".json")
    except Exception:
        return f"pid-{os.getpid()}"


def _progress_factory() -> Any:
    """Progress bars for large uploads (a text bar on stderr)."""

    class TextProgress:
        def __init__(self, total: int, label: str):
            self.total, self.label, self.done = total, label, 0
            self.t0 = time.time()
            self.last = 0.0

        def update(self, n: int) -> None:
            self.done += n
            now = time.time()
            if now - self.last > 0.5 or self.done >= self.total:
                self.last = now
                frac = self.done / self.total if self.total else 1
                rate = self.done / max(now - self.t0, 1e-6) / 2**20
                bar = "#" * int(frac * 30)
                sys.stderr.write(f"\r{self.label}: [{bar:<30}] {frac:4.0%} {rate:6.1f} MiB/s")
                sys.stderr.flush()

        def close(self) -> None:
            sys.stderr.write("\n")

    return TextProgress
