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

from . import _display, serialize
from ._workdir import Workdir
from .jobdir import (SECRET_ENV, IntegrityError, JobPaths, blob_mac, check, load_secret,
                     sign_document, sign_exit, verify_document, write_atomic,
                     write_json_atomic)

RESULT_KEY = "__result__"
EXCEPTION_KEY = "__exception__"
SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_CPUS_ON_NODE", "JOB_ID",
                 "PBS_JOBID", "HOSTNAME", "KUBERNETES_SERVICE_HOST")


class Terminated(BaseException):
    """The scheduler asked the job to stop (SIGTERM/SIGINT/SIGUSR1 …)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminated(signum)


# -- the cell's environment ---------------------------------------------------------------------

class _Shell:
    """What ``get_ipython()`` returns on the cluster: ``!cmd`` runs here; everything else is
    delegated to a real IPython shell, created the first time it is needed."""

    def __init__(self, module: types.ModuleType):
        self._module = module
        self._real: Any = None

    def _ipython(self) -> Any:
        if self._real is None:
            try:
                from IPython.core.interactiveshell import InteractiveShell
            except ImportError:
                raise RuntimeError("IPython is not installed where the job runs; "
                                   "magics other than !cmd are not available") from None
            self._real = InteractiveShell.instance(user_module=self._module,
                                                   user_ns=self._module.__dict__)
        return self._real

    def system(self, cmd: str) -> None:
        if "{" in cmd or "$" in cmd:
            return self._ipython().system(cmd)
        import subprocess
        sys.stdout.flush()
        sys.stderr.flush()
        code = subprocess.call(cmd, shell=True)
        self._module.__dict__["_exit_code"] = code
        return None

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        if "{" in cmd or "$" in cmd:
            return self._ipython().getoutput(cmd, split=split)
        import subprocess
        out = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, text=True).stdout
        return out.splitlines() if split else out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ipython(), name)


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

        def load(name: str) -> Any:
            if name in self.inputs:
                return self.inputs[name]
            if name in loading or name not in entries:
                raise IntegrityError(f"input {name!r} is not part of this job")
            loading.add(name)
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
            value = serialize._Unpickler(io.BytesIO(data), self.module, load, buffers).load()
            self.inputs[name] = value
            self.ns[name] = value
            return value

        for name in entries:
            load(name)
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

    def execute(self) -> tuple[Any, bool, BaseException | None]:
        """Run the cell; returns (last value, has value, exception)."""
        source = self.manifest["cell"]
        filename = f"<cluster-cell-{self.paths.job_id[:8]}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        tree = ast.parse(source, filename, "exec")
        last = None
        if self.manifest.get("has_result") and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        try:
            exec(compile(tree, filename, "exec"), self.ns)
            if last is not None:
                return eval(compile(last, filename, "eval"), self.ns), True, None
            return None, False, None
        except Terminated:
            raise
        except BaseException as e:  # the cell's own exception, including SystemExit
            return None, False, e
        finally:
            if "matplotlib.pyplot" in sys.modules:
                try:
                    from ._mpl_backend import flush_figures
                    flush_figures()
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
            }
        items = list(values.items())
        if has_last:
            items.append((RESULT_KEY, last))
        if exc is not None:
            items.append((EXCEPTION_KEY, _exception_payload(exc)))
        for index, (name, value) in enumerate(items):
            if isinstance(value, types.ModuleType):
                entries[name] = {"module": value.__name__}
                continue
            try:
                blob = serialize.dump(value, opts)
            except Exception as e:
                unpicklable[name] = f"{type(e).__name__}: {e}"
                continue
            path = self.paths.output(index)
            with open(path + ".tmp", "wb") as f:
                blob.write_to(f)
            os.replace(path + ".tmp", path)
            entries[name] = {"file": os.path.basename(path), "sha256": blob.sha256,
                             "size": blob.size,
                             "mac": blob_mac(self.key, self.paths.job_id, blob.sha256)}
        doc: dict[str, Any] = {"job_id": self.paths.job_id, "values": entries,
                               "unpicklable": unpicklable, "mutated": mutated,
                               "deleted": deleted}
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
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    os.environ.setdefault("MPLBACKEND", "module://clusterjupyter._mpl_backend")
    _display.sink = open(paths.displays, "a", buffering=1, encoding="utf-8")
    phase = "verifying the job"
    try:
        runner.load_manifest()
        phase = "entering the working directory"
        runner.workdir = Workdir.enter(runner.manifest, paths, runner.key)
        phase = "restoring inputs"
        runner.restore()
        before = runner.digests()
        phase = "running the cell"
        last, has_last, exc = runner.execute()
        phase = "sending results"
        values, mutated, deleted = runner.collect(before)
        runner.write_result(values, mutated, deleted, last, has_last, exc)
    except Terminated as t:
        if t.signum == signal.SIGXCPU:  # a time limit (the local scheduler's, RLIMIT_CPU)
            runner.write_state("timeout", 128 + t.signum,
                               f"time limit reached ({t} while {phase})", signal=t.signum)
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
