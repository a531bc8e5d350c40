"""Run one job directory: ``python -m clusterjupyter.runner JOBDIR``.

Executed on the cluster (or locally) by whatever the scheduler starts. It

1. records that it started (``started.json``: host, pid, scheduler job id);
2. sends the cell's stdout/stderr (file descriptors 1 and 2, so subprocesses and C code too) to
   the job's ``stdout``/``stderr`` files as they are written;
3. verifies the manifest and every input blob against the per-user secret, then restores inputs;
4. runs the cell with IPython's semantics: the last expression is the cell's value, ``display()``
   and matplotlib figures become rich outputs, ``!cmd`` works;
5. finds what the cell bound, deleted, or mutated in place (digest of each input before/after);
6. writes each value back as its own signed blob, then ``result.json`` (signed), then
   ``state.json`` last, atomically: the job's final state never depends on scheduler accounting.

Only the standard library and this package's runtime modules are imported up front; dill is
imported when a value needs it. The runner never imports the kernel side of the package.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import io
import json
import linecache
import os
import pickle
import signal
import socket
import sys
import time
import traceback
import types
from typing import Any

from . import _display, bundle, context, serialize
from ._workdir import Workdir
from .jobdir import (SECRET_ENV, IntegrityError, JobPaths, blob_mac, check, load_secret,
                     sign_document, sign_exit, verify_document, write_atomic,
                     write_json_atomic)

RESULT_KEY = "__result__"
EXCEPTION_KEY = "__exception__"
FIGURES_KEY = "__figures__"   # figures the job left open, for the kernel's pyplot
SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_CPUS_ON_NODE", "JOB_ID",
                 "PBS_JOBID", "HOSTNAME", "KUBERNETES_SERVICE_HOST",
                 # a sweep's job array: which array, which element
                 "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SGE_TASK_ID", "PBS_ARRAY_INDEX",
                 "PBS_ARRAYID")


class Terminated(BaseException):
    """The scheduler asked the job to stop (SIGTERM/SIGINT/SIGUSR1 …)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminated(signum)


# -- the cell's environment ---------------------------------------------------------------------

#: magics whose effect is on the kernel's state: run in the job, then again (quietly) in the
#: kernel once the job's result is applied, as the same cell would leave the kernel
KERNEL_STATE_MAGICS = ("matplotlib", "config", "cd", "env", "load_ext", "reload_ext",
                       "unload_ext")


class _Shell:
    """What ``get_ipython()`` returns in a job.

    ``!cmd`` runs here through a pseudo-terminal (as in the kernel, where output lines end in
    ``\\r\\n``); ``%matplotlib`` and ``%config InlineBackend`` set how this job shows figures;
    every other magic runs on a real IPython shell over the job's namespace, created the first
    time one is needed."""

    def __init__(self, module: types.ModuleType):
        self._module = module
        self._real: Any = None
        self.kernel_magics: list[list[str]] = []

    def _ipython(self) -> Any:
        if self._real is None:
            try:
                from IPython.core.interactiveshell import InteractiveShell
                from traitlets.config import Config
            except ImportError:
                raise RuntimeError("IPython is not installed where the job runs; "
                                   "magics other than !cmd are not available") from None
            cfg = Config()
            cfg.HistoryManager.enabled = False
            self._real = InteractiveShell.instance(config=cfg, user_module=self._module,
                                                   user_ns=self._module.__dict__)
            self._module.__dict__["get_ipython"] = lambda: self
        return self._real

    def _expand(self, cmd: str, depth: int) -> str:
        if "{" in cmd or "$" in cmd:
            return self._ipython().var_expand(cmd, depth=depth + 1)
        return cmd

    def system(self, cmd: str) -> None:
        self._module.__dict__["_exit_code"] = _system_pty(self._expand(cmd, 1))

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        import subprocess

        cmd = self._expand(cmd, depth + 1)
        sys.stdout.flush()
        out = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL).stdout.decode(errors="replace")
        if not split:
            return out
        try:
            from IPython.utils.text import SList
        except ImportError:
            return out.splitlines()
        return SList(out.splitlines())

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1) -> Any:
        replay = self._expand(line, _stack_depth) if name in KERNEL_STATE_MAGICS else None
        result = None
        if name == "matplotlib":
            _matplotlib_magic(line)
        elif name == "config" and line.strip().startswith("InlineBackend."):
            _inline_config(line)
        else:
            result = self._ipython().run_line_magic(name, line, _stack_depth + 1)
        if replay is not None:  # once it worked here (a failed %load_ext is not replayed)
            self.kernel_magics.append([name, replay])
        return result

    def run_cell_magic(self, name: str, line: str, cell: str) -> Any:
        return self._ipython().run_cell_magic(name, line, cell)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ipython(), name)


def _system_pty(cmd: str) -> int:
    """Run a shell command with its output on a pseudo-terminal copied to fd 1 (as IPython's
    ``system`` does in a kernel); returns its exit status."""
    import pty
    import subprocess

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        master, slave = pty.openpty()
    except OSError:
        return subprocess.call(cmd, shell=True)
    try:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    except Exception:
        pass
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=slave, close_fds=True)
    finally:
        os.close(slave)
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break  # EIO: the terminal closed
            if not data:
                break
            os.write(1, data)
    finally:
        os.close(master)
    return proc.wait()


def _matplotlib_magic(line: str) -> None:
    """``%matplotlib [GUI]`` in a job: figures are shown as the kernel will show them."""
    from . import context

    if not line.strip():
        print("Using matplotlib backend: module://matplotlib_inline.backend_inline")
    os.environ["MPLBACKEND"] = context.JOB_BACKEND
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        if plt.get_backend() != context.JOB_BACKEND:
            plt.switch_backend(context.JOB_BACKEND)


def _inline_config(line: str) -> None:
    from . import context

    target, sep, value = line.strip().partition("=")
    if not sep:
        return
    name = target.strip().split(".", 1)[1]
    context.configure_inline(name, ast.literal_eval(value.strip()))


def _patch_ipython_display() -> None:
    """Route IPython's own ``display`` to the job's display sink when the cell uses it."""
    try:
        import IPython.core.display_functions as dfn
        import IPython.display as ipd
    except ImportError:
        return
    dfn.display = ipd.display = _display.display  # type: ignore[assignment]

    def publish_display_data(data: dict, metadata: dict | None = None, **_: Any) -> None:
        _display.publish(data, metadata)

    dfn.publish_display_data = ipd.publish_display_data = publish_display_data  # type: ignore


def _redirect(fd: int, path: str) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, fd)
    os.close(target)


# -- the steps ----------------------------------------------------------------------------------

class Runner:
    def __init__(self, job_dir: str):
        self.paths = JobPaths.from_dir(os.path.abspath(job_dir))
        self.started = time.time()
        self.module = types.ModuleType("__main__")
        self.ns: dict[str, Any] = self.module.__dict__
        self.inputs: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}
        self.key = b""
        self.workdir: Workdir | None = None

    def _secret_path(self) -> str:
        path = os.environ.get(SECRET_ENV)
        if not path:
            base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
            path = os.path.join(base, "clusterjupyter", "secret")
        return path

    def load_manifest(self) -> None:
        self.key = load_secret(self._secret_path())
        with open(self.paths.manifest, "rb") as f:
            data = f.read()
        with open(self.paths.manifest_sig, "rb") as f:
            sig = f.read()
        self.manifest = verify_document(self.key, "manifest", data, sig)
        if self.manifest.get("job_id") != self.paths.job_id:
            raise IntegrityError("manifest belongs to another job")

    def restore(self) -> None:
        context.apply(self.manifest.get("context") or {})
        sys.modules["__main__"] = self.module
        self.ns["__builtins__"] = builtins
        builtins.display = _display.display  # type: ignore[attr-defined]
        self.shell = _Shell(self.module)
        self.ns["get_ipython"] = lambda: self.shell
        for name, modname in self.manifest.get("modules", {}).items():
            try:
                self.ns[name] = __import__(modname, fromlist=["_"])
            except ImportError as e:
                print(f"clusterjupyter: module {modname!r} (as {name}) is not available where "
                      f"the job runs: {e}", file=sys.stderr)
        entries = self.manifest.get("inputs", {})
        loading: set[str] = set()

        def read(name: str) -> tuple[bytes, list]:
            entry = entries[name]
            check(blob_mac(self.key, self.paths.job_id, entry["sha256"]), entry["mac"],
                  f"input {name!r}")
            got = hashlib.sha256()
            with open(self.paths.blob(entry["sha256"]), "rb") as f:
                try:
                    data, buffers = serialize.read_blob(f, got, entry.get("size"))
                except pickle.UnpicklingError as e:
                    raise IntegrityError(f"blob of input {name!r} was altered ({e})") from None
            if got.hexdigest() != entry["sha256"]:
                raise IntegrityError(f"blob of input {name!r} was altered")
            return data, buffers

        def load(name: str) -> Any:
            if name in self.inputs:
                return self.inputs[name]
            if name in loading or name not in entries or name in bundle.GROUPS:
                raise IntegrityError(f"input {name!r} is not part of this job")
            loading.add(name)
            data, buffers = read(name)
            value = serialize._Unpickler(io.BytesIO(data), self.module, load, buffers).load()
            self.inputs[name] = value
            self.ns[name] = value
            return value

        for name in entries:
            if name not in bundle.GROUPS:
                load(name)
        for group in bundle.GROUPS:
            if group in entries:
                data, buffers = read(group)
                for name, value in bundle.load_group(data, buffers, self.module, load,
                                                     load).items():
                    self.inputs[name] = value
                    self.ns[name] = value
        if "IPython" in self.manifest["cell"] or "IPython" in sys.modules:
            _patch_ipython_display()

    def digests(self) -> dict[str, str | None]:
        opts = self.dump_options()
        return {name: serialize.state_digest(value, opts) for name, value in self.inputs.items()
                if not isinstance(value, (types.FunctionType, type, types.ModuleType))}

    def dump_options(self) -> serialize.DumpOptions:
        # notebook classes, from the kernel or defined by the cell, travel once by value (as
        # names of their own) and are referenced from every other value
        return serialize.DumpOptions(main=self.module,
                                     class_ref=serialize.main_class_ref(self.ns))

    @property
    def filename(self) -> str:
        """The cell's file name: the one the kernel gave it, so tracebacks and warnings name
        the cell as the kernel does."""
        return self.manifest.get("filename") or f"<cluster-cell-{self.paths.job_id[:8]}>"

    def execute(self) -> tuple[Any, bool, BaseException | None]:
        """Run the cell; returns (last value, has value, exception)."""
        source = self.manifest["cell"]
        filename = self.filename
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(source, filename, "exec", flags)
        last = None
        if self.manifest.get("has_result") and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        self.settings_before = context.snapshot()
        try:
            _run(compile(tree, filename, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), self.ns)
            if last is not None:
                code = compile(last, filename, "eval", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                return _run(code, self.ns), True, None
            return None, False, None
        except Terminated:
            raise
        except BaseException as e:  # the cell's own exception, including SystemExit
            return None, False, e
        finally:
            self.show_figures()

    def show_figures(self) -> None:
        """What the kernel's inline backend does after a cell: show the open figures. A marker
        first, so the kernel shows them after the cell's value, as it would."""
        _display.publish({}, {"clusterjupyter": "post_execute"})
        if "matplotlib.pyplot" not in sys.modules:
            return
        try:
            import matplotlib.pyplot as plt

            if plt.get_backend() == context.JOB_BACKEND:
                from ._mpl_backend import flush_figures

                flush_figures(True)
        except Exception as e:  # a broken figure must not lose the result
            print(f"clusterjupyter: could not render figures: {e}", file=sys.stderr)

    def collect(self, before: dict[str, str | None]) -> tuple[dict[str, Any], list[str], list[str]]:
        """Names to send back: rebound or new, mutated inputs; and names deleted."""
        skip = {"__builtins__", "__name__", "__doc__", "__package__", "__loader__", "__spec__",
                "get_ipython", "_exit_code"}
        real = getattr(getattr(self, "shell", None), "_real", None)
        injected = getattr(real, "user_ns_hidden", {}) if real is not None else {}
        out: dict[str, Any] = {}
        for name, value in self.ns.items():
            if name in skip or (name.startswith("__") and name.endswith("__")):
                continue
            if name in injected and injected[name] is value:
                continue  # put there by the IPython shell that ran a magic, not by the cell
            if name not in self.inputs or self.inputs[name] is not value:
                out[name] = value
        mutated = []
        opts = self.dump_options()
        for name, digest in before.items():
            if name in self.ns and name not in out and self.ns[name] is self.inputs[name]:
                if digest is None or serialize.state_digest(self.ns[name], opts) != digest:
                    out[name] = self.ns[name]
                    mutated.append(name)
        deleted = [n for n in self.inputs if n not in self.ns]
        deleted += [n for n in self.manifest.get("deleted", []) if n not in self.ns
                    and n not in deleted]
        return out, mutated, deleted

    def output_blobs(self, items: dict[str, Any], mutated: list[str],
                     opts: serialize.DumpOptions, entries: dict[str, Any],
                     unpicklable: dict[str, str]) -> dict[str, serialize.Blob]:
        """The values to send back, pickled: modules by name (into ``entries``), notebook
        classes on their own, everything else together (:mod:`.bundle`)."""
        outputs: dict[str, serialize.Blob] = {}
        for name, value in list(items.items()):
            if isinstance(value, types.ModuleType):
                entries[name] = {"module": value.__name__}
                del items[name]
            elif isinstance(value, type) and opts.class_ref is not None \
                    and opts.class_ref(value) == name:
                # a notebook class travels on its own: values refer to it by name
                try:
                    outputs[name] = serialize.dump(value, opts)
                except Exception as e:
                    unpicklable[name] = f"{type(e).__name__}: {e}"
                del items[name]
        # inputs travel back as references to the kernel's objects (a mutated input's new
        # state by value, to be written into the kernel's object); a module's own objects as
        # references to the kernel's module
        refs = bundle.refs_for(self.inputs)
        for key, pid in bundle.module_refs(items).items():
            refs.setdefault(key, pid)
        arrays = bundle.arrays_among(*self.inputs.values(), *items.values())
        grouped = {n: bundle.Root(v) if n in mutated else v for n, v in items.items()}
        groups, bad = bundle.dump_groups(grouped, opts, refs, arrays)
        unpicklable.update(bad)
        outputs.update(groups)
        return outputs

    def write_result(self, values: dict[str, Any], mutated: list[str], deleted: list[str],
                     last: Any, has_last: bool, exc: BaseException | None) -> None:
        os.makedirs(self.paths.outputs, mode=0o700, exist_ok=True)
        opts = self.dump_options()
        entries: dict[str, Any] = {}
        unpicklable: dict[str, str] = {}
        exc_info = None
        if exc is not None:
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            exc_info = {
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
                "frames": cell_frames(exc.__traceback__, self.filename),
            }
        items = dict(values)
        if has_last:
            items[RESULT_KEY] = last
        figures, drew = _pyplot_state()
        if figures:
            items[FIGURES_KEY] = figures
        outputs = self.output_blobs(items, mutated, opts, entries, unpicklable)
        if exc is not None:
            try:
                outputs[EXCEPTION_KEY] = serialize.dump(_exception_payload(exc), opts)
            except Exception as e:
                unpicklable[EXCEPTION_KEY] = f"{type(e).__name__}: {e}"
        for index, (name, blob) in enumerate(outputs.items()):
            path = self.paths.output(index)
            with open(path + ".tmp", "wb") as f:
                blob.write_to(f)
            os.replace(path + ".tmp", path)
            entries[name] = {"file": os.path.basename(path), "sha256": blob.sha256,
                             "size": blob.size,
                             "mac": blob_mac(self.key, self.paths.job_id, blob.sha256)}
            if name in bundle.GROUPS:
                entries[name]["names"] = getattr(blob, "names", [])
        doc: dict[str, Any] = {"job_id": self.paths.job_id, "values": entries,
                               "unpicklable": unpicklable, "mutated": mutated,
                               "deleted": deleted, "order": list(values)}
        shell = getattr(self, "shell", None)
        if shell is not None and shell.kernel_magics:
            doc["kernel_magics"] = shell.kernel_magics
        if getattr(self, "settings_before", None) is not None:
            try:
                doc["settings"] = context.changes(self.settings_before)
            except Exception as e:  # settings that cannot be read must not lose the result
                print(f"clusterjupyter: the cell's settings stay in the job: {e}",
                      file=sys.stderr)
        if drew:
            doc["drew"] = True
        if has_last and RESULT_KEY in unpicklable:
            doc["result_bundle"] = _display.mimebundle(last)[0]
        if exc_info is not None:
            doc["exception"] = exc_info
        if self.workdir is not None:
            doc.update(self.workdir.collect())   # files the cell created or changed
        data, sig = sign_document(self.key, "result", doc)
        write_atomic(self.paths.result, data)
        write_atomic(self.paths.result_sig, sig)

    def write_state(self, state: str, exit_code: int, reason: str = "", **extra: Any) -> None:
        if len(reason) > 2000:  # (the cell's whole exception is in the result)
            reason = reason[:2000] + " …"
        doc = {"state": state, "exit_code": exit_code, "reason": reason,
               "host": socket.gethostname(), "pid": os.getpid(),
               "started": self.started, "finished": time.time(),
               "result": os.path.exists(self.paths.result_sig), **extra}
        try:
            self.key = self.key or load_secret(self._secret_path())
        except (OSError, IntegrityError):
            pass  # unsigned: the kernel reports it as not verifiable, with this reason
        data = sign_exit(self.key, self.paths.job_id, doc) if self.key else json.dumps(doc)
        write_atomic(self.paths.state, data.encode() if isinstance(data, str) else data)


def _pyplot_state() -> tuple[list[Any], bool]:
    """The figures the job leaves open (they join the kernel's pyplot, as the cell's would),
    and whether the cell used pyplot with the job's inline-like backend."""
    if "matplotlib.pyplot" not in sys.modules:
        return [], False
    try:
        from . import _mpl_backend

        return _mpl_backend.take_open(), bool(_mpl_backend.state["drew"])
    except Exception:
        return [], False


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def _run(code: types.CodeType, ns: dict) -> Any:
    """Evaluate compiled cell code; top-level ``await`` runs on an event loop, as in IPython."""
    if code.co_flags & _CO_COROUTINE:
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(eval(code, ns))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    return eval(code, ns)


def cell_frames(tb: types.TracebackType | None, filename: str) -> list[dict[str, Any]]:
    """The traceback's frames from the cell's own on (the runner's are left out): file, line,
    function name and argument names, for the kernel to show as its own traceback."""
    frames: list[dict[str, Any]] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if frames or code.co_filename == filename:
            nargs = code.co_argcount + code.co_kwonlyargcount
            frames.append({
                "filename": code.co_filename, "name": code.co_name, "lineno": tb.tb_lineno,
                "args": list(code.co_varnames[:nargs]),
                "varargs": code.co_varnames[nargs] if code.co_flags & 0x04 else None,
                "varkw": code.co_varnames[nargs + bool(code.co_flags & 0x04)]
                if code.co_flags & 0x08 else None,
                "posonly": code.co_posonlyargcount,
            })
        tb = tb.tb_next
    return frames


def _exception_payload(exc: BaseException) -> Any:
    """The exception with its traceback in a form that pickles (tblib, when installed)."""
    tb: Any = None
    try:
        from tblib import Traceback
        # drop the runner's own frame: the user sees the cell's frames only
        raw = exc.__traceback__
        if raw is not None and raw.tb_next is not None:
            raw = raw.tb_next
        tb = Traceback(raw).to_dict() if raw is not None else None
    except Exception:
        tb = None
    exc.__traceback__ = None
    return {"exception": exc, "traceback": tb}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m clusterjupyter.runner JOBDIR", file=sys.stderr)
        return 2
    runner = Runner(argv[0])
    paths = runner.paths
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGXCPU):
        signal.signal(signum, _on_signal)
    write_json_atomic(paths.started, {
        "host": socket.gethostname(), "pid": os.getpid(), "time": runner.started,
        "python": sys.version.split()[0],
        "env": {k: os.environ[k] for k in SCHEDULER_ENV if k in os.environ}})
    _redirect(1, paths.stdout)
    _redirect(2, paths.stderr)
    sys.stdout = _display.Stream(  # type: ignore[assignment]
        "stdout", open(1, "w", buffering=1, closefd=False, errors="backslashreplace"))
    sys.stderr = _display.Stream(  # type: ignore[assignment]
        "stderr", open(2, "w", buffering=1, closefd=False, errors="backslashreplace"))
    os.environ["MPLBACKEND"] = context.JOB_BACKEND
    _display.sink = open(paths.displays, "a", buffering=1, encoding="utf-8")
    phase = "verifying the job"
    try:
        runner.load_manifest()
        phase = "entering the working directory"
        runner.workdir = Workdir.enter(runner.manifest, paths, runner.key)
        phase = "restoring inputs"
        runner.restore()
        if runner.workdir is not None:
            runner.workdir.patch_inputs(runner.inputs, runner.ns)
        before = runner.digests()
        phase = "running the cell"
        last, has_last, exc = runner.execute()
        phase = "sending results"
        values, mutated, deleted = runner.collect(before)
        runner.write_result(values, mutated, deleted, last, has_last, exc)
    except Terminated as t:
        if t.signum == signal.SIGXCPU:  # a time limit (the local scheduler's, RLIMIT_CPU)
            # the signal stays in the exit file; the reason is in the user's words
            runner.write_state("timeout", 128 + t.signum, "time limit reached",
                               signal=t.signum)
        else:
            runner.write_state("cancelled", 128 + t.signum, f"terminated by {t} while {phase}",
                               signal=t.signum)
        return 128 + t.signum
    except BaseException as e:
        traceback.print_exc()
        reason = f"{type(e).__name__} while {phase}: {e}"
        runner.write_state("failed", 70, reason, internal=True)
        return 70
    if exc is not None:
        runner.write_state("failed", 1, f"the cell raised {type(exc).__name__}: {exc}",
                           cell_error=True)
        return 1
    runner.write_state("completed", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
