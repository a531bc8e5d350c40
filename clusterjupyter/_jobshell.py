"""The cell's environment in a job and the cell's run: what ``get_ipython()`` returns, ``!cmd`` on
a pseudo-terminal, ``%matplotlib`` and ``%config InlineBackend``, IPython's own ``display`` routed
to the job's display sink; then the cell run with IPython's semantics (the last expression is its
value, top-level ``await`` works) and the open figures shown after it, as the inline backend does.

Runs where the job runs (imported by :mod:`.runner`): standard library only; IPython is imported
only when the cell runs a magic that needs it.
"""

from __future__ import annotations

import ast
import linecache
import os
import signal
import sys
import types
from typing import Any

from . import _display, context


class Terminated(BaseException):
    """The scheduler asked the job to stop (SIGTERM/SIGINT/SIGUSR1 …, SIGXCPU at a CPU limit)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def on_signal(signum: int, frame: Any) -> None:
    """Signal handler: stop the cell where it is, with :class:`Terminated`."""
    raise Terminated(signum)

#: magics whose effect is on the kernel's state: run in the job, then again (quietly) in the
#: kernel once the job's result is applied, as the same cell would leave the kernel
KERNEL_STATE_MAGICS = ("matplotlib", "config", "cd", "env", "load_ext", "reload_ext",
                       "unload_ext")


class JobShell:
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
        self._module.__dict__["_exit_code"] = system_pty(self._expand(cmd, 1))

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


def system_pty(cmd: str) -> int:
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
    if not line.strip():
        print("Using matplotlib backend: module://matplotlib_inline.backend_inline")
    os.environ["MPLBACKEND"] = context.JOB_BACKEND
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        if plt.get_backend() != context.JOB_BACKEND:
            plt.switch_backend(context.JOB_BACKEND)


def _inline_config(line: str) -> None:
    """``%config InlineBackend.NAME = VALUE`` in a job."""
    target, sep, value = line.strip().partition("=")
    if not sep:
        return
    name = target.strip().split(".", 1)[1]
    context.configure_inline(name, ast.literal_eval(value.strip()))


def patch_ipython_display() -> None:
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



# -- the cell's run -----------------------------------------------------------------------------

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


def run_cell(source: str, filename: str, has_result: bool,
             ns: dict[str, Any]) -> tuple[Any, bool, BaseException | None]:
    """Run the cell in ``ns``; returns (last value, has value, the cell's exception). A
    :class:`Terminated` goes through: it is the job's end, not the cell's error."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(source, filename, "exec", flags)
    last = None
    if has_result and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        _run(compile(tree, filename, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), ns)
        if last is not None:
            code = compile(last, filename, "eval", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            return _run(code, ns), True, None
        return None, False, None
    except Terminated:
        raise
    except BaseException as e:  # the cell's own exception, including SystemExit
        return None, False, e
    finally:
        show_figures()


def show_figures() -> None:
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


def pyplot_state() -> tuple[list[Any], bool]:
    """The figures the job leaves open (they join the kernel's pyplot, as the cell's would),
    and whether the cell used pyplot with the job's inline-like backend."""
    if "matplotlib.pyplot" not in sys.modules:
        return [], False
    try:
        from . import _mpl_backend

        return _mpl_backend.take_open(), bool(_mpl_backend.state["drew"])
    except Exception:
        return [], False
