"""``%%cluster`` and ``%cluster …``: thin IPython magics over the library.

Parsing, messages and pushing values into the namespace live here; everything else (capture,
payload, backends, journal) is library code shared with the panel and the server.
"""

from __future__ import annotations

import difflib
import keyword
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Unicode

from . import api
from .backends import Submission, backend_for
from .capture import analyze, gather
from .errors import ClusterError, ProfileError
from .jobs import (Job, PushBack, Waiter, failure, interrupted, publish_display, push,
                   queue, register_source)
from .failure import empty_log, format_error
from .journal import JobRecord, format_seconds
from . import context, kernelcell
from .options import count_option
from .payload import pack_inputs
from .profiles import get_profile, load_profiles
from .resources import Resources
from .states import JobState

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

StatusFactory = Callable[[Any, JobRecord], Any]
RESOURCE_OPTIONS = ("time", "cpus", "mem", "gpus", "nodes", "partition", "account", "qos",
                    "constraint")
SUBCOMMANDS = {
    "jobs": "list jobs from the journal (all kernels)",
    "status": "show one job",
    "logs": "show a job's stdout, stderr or scheduler log",
    "cancel": "cancel a job",
    "result": "push a finished job's outputs into this kernel",
    "files": "bring back the files a job left on the cluster (over the return limit)",
    "profiles": "list cluster profiles",
    "default": "choose the profile %%cluster uses without a name",
    "script": "show the job script %%cluster would submit",
    "queue": "show the scheduler's queue of a profile",
    "panel": "open the job monitor panel",
    "metrics": "jobs by state, retries, reconnects, commands, timings per profile",
    "sweep": "show a sweep's elements and their states",
    "env": "env sync|list|prune|off PROFILE [--packages a,b] [--all]: a matching environment",
}


def _unquoted(args: Any) -> Any:
    """IPython splits magic lines keeping quotes (``--name 'my job'`` gives ``"'my job'"``):
    take off one pair of matching quotes around each option value."""
    def strip(v: Any) -> Any:
        if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            return v[1:-1]
        return [strip(x) for x in v] if isinstance(v, list) else v
    for key, value in vars(args).items():
        setattr(args, key, strip(value))
    return args


def _options_help() -> str:
    return ", ".join(f"--{o}" for o in (*RESOURCE_OPTIONS, "directive", "name", "job", "async",
                                        "dry-run", "skip", "stage", "stage-limit", "sweep",
                                        "zip", "max-elements", "max-running"))


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

        Line form: ``%cluster jobs|status|logs|cancel|result|profiles|default|script|queue|panel``.
        """
        __tracebackhide__ = True
        if cell is None:
            return self._line(line)
        args = self._parse(self.cluster, line)
        if args.job is not None and not (args.job.isidentifier()
                                         and not keyword.iskeyword(args.job)):
            raise UsageError(f"--job needs a Python name to bind the Job to, not {args.job!r}")
        here = None if args.dry_run else kernelcell.kernel_magic_lines(
            self.shell.transform_cell(cell))
        if here:   # a cell that only configures this kernel (%matplotlib inline, %load_ext)
            return kernelcell.run_in_kernel(self.shell, here)
        return self._run_cell(args, cell)

    def _parse(self, func: Any, line: str) -> Any:
        try:
            return _unquoted(parse_argstring(func, line))
        except ValueError as e:  # shlex: an unclosed quote
            raise UsageError(f"cannot read the options ({e}): {line.strip()}") from None
        except UsageError as e:
            msg = str(e)
            bad = [w for w in line.split() if w.startswith("-")]
            valid = _options_help()
            hints = []
            for word in bad:
                opt = word.split("=")[0]
                if opt.lstrip("-").replace("-", "_") not in [v.lstrip("-").replace("-", "_")
                                                             for v in valid.split(", ")]:
                    close = difflib.get_close_matches(opt, valid.split(", "), n=1)
                    hints.append(f"unknown option {opt}"
                                 + (f" (did you mean {close[0]}?)" if close else ""))
            raise UsageError("; ".join(hints or [msg]) + f"\nvalid options: {valid}") from None

    def _profile_name(self, name: str | None) -> str | None:
        return name or self.default_profile or None

    def _current_profile(self) -> str:
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
            backend = backend_for(self._profile_name(args.profile))
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

    # -- %cluster … -------------------------------------------------------------------------
    def _line(self, line: str) -> Any:
        __tracebackhide__ = True
        words = line.strip().split(None, 1)
        if not words:
            raise UsageError(self._line_usage())
        sub, rest = words[0], (words[1] if len(words) > 1 else "")
        if sub not in SUBCOMMANDS:
            close = difflib.get_close_matches(sub, list(SUBCOMMANDS), n=1)
            raise UsageError(f"unknown subcommand {sub!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + "\n" + self._line_usage())
        try:
            return getattr(self, f"_cmd_{sub}")(rest)
        except KeyError as e:
            raise UsageError(str(e).strip("'\"")) from None
        except ProfileError as e:
            raise UsageError(str(e)) from None

    def _line_usage(self) -> str:
        lines = [f"  %cluster {k:<9} {v}" for k, v in SUBCOMMANDS.items()]
        return "usage:\n" + "\n".join(lines) + "\n  %%cluster [PROFILE] [options]  run a cell"

    def _one_arg(self, rest: str, what: str) -> str:
        parts = rest.split()
        if len(parts) != 1:
            raise UsageError(f"expected one {what}, got {rest!r}")
        return parts[0]

    def _cmd_jobs(self, rest: str) -> None:
        states: tuple[str, ...] | None = None
        profile = None
        limit = 50
        it = iter(rest.split())
        for word in it:
            if word == "--active":
                states = ("pending", "running")
            elif word == "--state":
                states = tuple(next(it, "").split(","))
            elif word == "--profile":
                profile = next(it, None)
            elif word == "--limit":
                limit = count_option("--limit", next(it, ""))
            else:
                raise UsageError(f"unknown option {word!r} for %cluster jobs; valid: --active, "
                                 "--state STATE[,STATE], --profile NAME, --limit N")
        from .sweeplist import job_rows

        try:
            states = tuple(JobState.parse(s).value for s in states) if states else None
        except ValueError as e:
            raise UsageError(str(e)) from None
        # a sweep is one row, with its element counts
        recs = job_rows(api.journal(), states, profile, limit, self._refresh)
        if not recs:
            print("no jobs in the journal" + (f" for profile {profile}" if profile else ""))
            return None
        print(f"{'ID':<9} {'NAME':<18} {'PROFILE':<10} {'NATIVE':<9} {'STATE':<13} "
              f"{'ELAPSED':>8}  REASON")
        for r in recs:
            print(f"{r.id[:8]:<9} {r.name[:18]:<18} {r.profile[:10]:<10} "
                  f"{r.native[:9]:<9} {r.state.value:<13} "
                  f"{format_seconds(r.elapsed):>8}  {r.reason[:60]}")
        return None

    def _refresh(self, recs: list[JobRecord]) -> None:
        def say(profile: str, e: Exception) -> None:
            print(f"clusterjupyter: cannot refresh jobs of {profile}: {e}", file=sys.stderr)

        api.refresh_jobs(recs, on_error=say)

    def _cmd_status(self, rest: str) -> Job:
        rec = api.get_job(self._one_arg(rest, "job id"))
        self._refresh([rec])
        return Job(api.get_job(rec.id))

    def _cmd_logs(self, rest: str) -> None:
        parts = rest.split()
        stream, tail, ref = "stdout", None, None
        it = iter(parts)
        for word in it:
            if word in ("--stream", "-s"):
                stream = next(it, "")
            elif word in ("--stderr", "--stdout", "--scheduler"):
                stream = word[2:]
            elif word in ("--tail", "-n"):
                tail = count_option("--tail", next(it, ""))
            elif word.startswith("-"):
                raise UsageError(f"unknown option {word!r} for %cluster logs; valid: "
                                 "--stream stdout|stderr|scheduler, --tail N")
            else:
                ref = word
        if ref is None:
            raise UsageError("usage: %cluster logs ID [--stream stderr] [--tail N]")
        try:
            text = api.job_logs(ref, stream, tail)
        except ValueError as e:
            raise UsageError(str(e)) from None
        rec = api.get_job(ref)
        print(text or empty_log(stream, rec.state.final), end="" if text else "\n")
        err = Job(rec).error
        if err:
            print(("\n" if text and not text.endswith("\n") else "") + "\n"
                  + format_error(rec, err, logs=False))

    def _cmd_cancel(self, rest: str) -> None:
        rec = api.get_job(self._one_arg(rest, "job id"))
        if rec.state.final:
            print(f"job {rec.id[:8]} already ended: {rec.state.value}")
            return
        job = Job(rec)
        state = job.cancel()
        print(f"job {rec.id[:8]} on {rec.profile}: {state.value}")

    def _cmd_sweep(self, rest: str) -> Any:
        from .sweepcell import show_sweep

        return show_sweep(self._one_arg(rest, "sweep id"))

    def _cmd_result(self, rest: str) -> Any:
        __tracebackhide__ = True
        from .sweepcell import sweep_result
        from .sweeps import find

        if find(self._one_arg(rest, "job id")) is not None:
            return sweep_result(self, self._one_arg(rest, "job id"))
        rec = api.get_job(self._one_arg(rest, "job id"))
        self._refresh([rec])
        job = Job(api.get_job(rec.id))
        register_source(rec.id, rec.cell)
        state = job.wait()
        return self._finish(job, state)

    def _cmd_files(self, rest: str) -> None:
        from .staging import fetch_left

        job = Job(api.get_job(self._one_arg(rest, "job id")))
        if not job.backend.has_result(job.record):
            raise UsageError(f"job {job.id[:8]} has no result (yet): {job.record.state.value}")
        b = job.backend
        notice = fetch_left(b.transport, b.paths(job.record), b.key).notice(
            job.id, b.transport.where, b.name)
        print(notice or f"job {job.id[:8]} left no files on {b.transport.where}",
              file=sys.stderr if notice else sys.stdout)

    def _cmd_profiles(self, rest: str) -> None:
        profiles = load_profiles()
        current = self._current_profile()
        for p in profiles.values():
            mark = "*" if p.name == current else " "
            where = f"{p.user + '@' if p.user else ''}{p.host}" if p.host else "this machine"
            print(f"{mark} {p.name:<14} {p.scheduler:<10} {where}"
                  + (f"  {p.description}" if p.description else ""))

    def _cmd_default(self, rest: str) -> None:
        parts = rest.split()
        save = "--save" in parts
        names = [p for p in parts if p != "--save"]
        if not names:
            print(self._current_profile())
            return
        name = names[0]
        get_profile(name)
        self.default_profile = name
        if save:
            from .profiles import set_default

            set_default(name)
        print(f"%%cluster now runs on {name!r}" + (" (saved)" if save else ""))

    def _cmd_script(self, rest: str) -> None:
        args = self._parse(self.cluster, rest)
        args.dry_run = True
        self._run_cell(args, "")

    def _cmd_queue(self, rest: str) -> None:
        name = rest.strip() or self._profile_name(None)
        backend = backend_for(name)
        try:
            listed = queue(backend)
        except ClusterError as e:
            raise UsageError(str(e)) from None
        if not listed:
            print(f"the queue of {backend.name} is empty")
            return
        print(f"{'JOBID':<10} {'NAME':<20} {'USER':<10} {'STATE':<10} {'TIME':>10}  REASON")
        for q, r in listed:
            name = r.name if r else q.name
            print(f"{q.native_id:<10} {name[:20]:<20} {q.user[:10]:<10} {q.state.value:<10} "
                  f"{q.elapsed:>10}  {q.reason}")

    def _cmd_metrics(self, rest: str) -> None:
        from .metrics import collect, format_table

        figures = collect(api.journal())
        if rest.strip():
            if rest.strip() not in figures:
                raise UsageError(f"no metrics for profile {rest.strip()!r}; profiles with "
                                 f"jobs: {', '.join(figures) or 'none'}")
            figures = {rest.strip(): figures[rest.strip()]}
        print(format_table(figures))

    def _cmd_panel(self, rest: str) -> Any:
        from .widgets import Panel

        return Panel(self.shell)


    def _cmd_env(self, rest: str) -> None:
        from .envsync import ACTIONS, command

        words = rest.split()
        if not words or words[0] not in ACTIONS:
            raise UsageError(f"usage: %cluster env {{{'|'.join(ACTIONS)}}} [PROFILE] "
                             "[--packages a,b] [--all]")
        packages = None
        if "--packages" in words:
            i = words.index("--packages")
            packages = [p for p in ",".join(words[i + 1:i + 2]).split(",") if p]
            del words[i:i + 2]
        whole = "--all" in words
        words = [w for w in words if w != "--all"]
        if len(words) > 2 or any(w.startswith("-") for w in words):
            raise UsageError(f"unexpected {' '.join(words[2:]) or words[-1]!r}; options: "
                             "--packages a,b, --all")
        backend = backend_for(self._profile_name(words[1] if len(words) > 1 else None))
        try:
            command(backend, words[0], packages, whole)
        except ClusterError as e:
            raise UsageError(str(e)) from None


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
