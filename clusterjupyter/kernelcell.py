"""The kernel's side of running a cell elsewhere as if it ran here.

Before submission: the cell gets the file name the kernel gives its cells (tracebacks and
warnings in the job then name it as the kernel does), it is compiled here first (a syntax error
is the kernel's own ``SyntaxError`` and nothing is submitted), and its magics are checked (one a
job cannot run as the kernel would is refused, by name). After the job: its exception is shown
from the cell's own frames, magics that change the kernel's state are replayed here, and the
figures the job showed at the end of the cell come after the cell's value, as inline figures do.
"""

from __future__ import annotations

import ast
import codecs
import json
import sys
from typing import Any, Callable, NoReturn

from IPython.core.error import UsageError

from .jobs import Follower
from .tracebacks import rebuild_traceback  # noqa: F401  (part of this module's API)

#: magics a job runs as the kernel would; any other is refused before submission
JOB_MAGICS = frozenset({
    "time", "timeit", "prun", "capture", "matplotlib", "config", "env", "cd", "pwd",
    "bash", "sh", "script", "perl", "ruby", "writefile", "html", "markdown", "latex",
    "javascript", "js", "svg", "precision", "who", "whos", "who_ls", "sx", "sc",
    "load_ext", "reload_ext", "unload_ext",
})
_SHELL = ("!", )


def cell_filename(shell: Any, raw: str, source: str) -> str:
    """The name the kernel gives this cell's code (``Cell In[n]`` in its tracebacks); its
    source is registered with the kernel's line cache under that name."""
    compiler: Any = getattr(shell, "compile", None)
    try:
        return compiler.cache(source, shell.execution_count, raw_code=raw)
    except Exception:
        return f"<cluster-cell-{shell.execution_count}>"


def check_compiles(shell: Any, source: str, filename: str) -> None:
    """Compile the cell as the kernel would (top-level ``await`` allowed); a cell that does
    not compile raises the kernel's own ``SyntaxError`` for this cell."""
    flags = getattr(getattr(shell, "compile", None), "flags", 0) | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        compile(source, filename, "exec", flags, dont_inherit=True)
    except SyntaxError as e:
        e.__traceback__ = None
        raise_in_cell(shell, e)


#: magics that act on the kernel itself: a cell made only of them runs in the kernel
KERNEL_MAGICS = frozenset({"load_ext", "reload_ext", "unload_ext", "matplotlib", "config",
                           "env", "cd", "precision"})


def kernel_magic_lines(source: str) -> list[tuple[str, str]] | None:
    """The (magic, line) pairs of a cell made only of magics that act on the kernel itself
    (``%matplotlib inline``, ``%load_ext x``); None for any other cell."""
    from .capture import _magic_call

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = []
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        magic = _magic_call(call) if isinstance(call, ast.Call) else None
        if magic is None or magic[0] != "line" or magic[1] not in KERNEL_MAGICS:
            return None
        lines.append((magic[1], magic[2][1] if len(magic[2]) > 1 else ""))
    return lines or None


def run_in_kernel(shell: Any, lines: list[tuple[str, str]]) -> Any:
    """Run a cell of kernel magics here, as the kernel would run it without ``%%cluster``."""
    result = None
    for name, line in lines:
        try:
            result = shell.run_line_magic(name, line)
        except Exception as e:
            tb = e.__traceback__
            raise_in_cell(shell, e.with_traceback(tb.tb_next if tb is not None else None))
    return result


def check_magics(magics: list[tuple[str, str]], known: Any = None) -> None:
    """Refuse, before anything is submitted, a magic a job cannot run as the kernel would.

    ``known`` is the kernel's magics (``shell.magics_manager.magics``): a magic this kernel
    does not have runs in the job too, where an extension the cell loads may define it, or
    IPython raises the kernel's own ``UsageError`` (not found) at the same point of the cell."""
    for kind, name in magics:
        if name in _SHELL or name in JOB_MAGICS:
            continue
        if known is not None and name not in known.get(kind, {}):
            continue
        prefix = "%%" if kind == "cell" else "%"
        runs = ", ".join(f"%{m}" for m in sorted(JOB_MAGICS))
        raise UsageError(
            f"{prefix}{name} cannot run inside %%cluster (a job runs in another process, "
            f"where it would not act as in this kernel); run it in a cell of its own. "
            f"Magics a job runs: {runs}, !cmd. Nothing was submitted.")


# -- the cell's exception ----------------------------------------------------------------------

def raise_in_cell(shell: Any, exc: BaseException) -> NoReturn:
    """Raise ``exc`` out of the magic so that the kernel shows it as it shows an exception of
    a cell that ran here: from the cell's own frames (no magic in between), a ``SyntaxError``
    as IPython shows one. ``exc.__traceback__`` holds those frames (or None)."""
    custom = getattr(shell, "custom_exceptions", None)
    if (custom is None or isinstance(exc, (SystemExit, KeyboardInterrupt, UsageError))
            or (custom and isinstance(exc, custom))):
        raise exc
    frames = exc.__traceback__
    saved = (shell.custom_exceptions, shell.CustomTB)

    def show(sh: Any, etype: type, value: BaseException, tb: Any,
             tb_offset: int | None = None) -> None:
        sh.custom_exceptions, sh.CustomTB = saved  # once
        if value is exc and isinstance(value, SyntaxError):
            stb = sh.SyntaxTB.structured_traceback(etype, value, [])
        elif value is exc:
            stb = sh.InteractiveTB.structured_traceback(etype, value, frames, tb_offset=0)
        else:
            stb = sh.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
        sh._showtraceback(etype, value, stb)

    shell.set_custom_exc((type(exc),), show)
    raise exc.with_traceback(frames)


# -- after the job -------------------------------------------------------------------------------

def replay_kernel_magics(shell: Any, magics: list[list[str]]) -> None:
    """Magics that changed the job's state (``%cd``, ``%env X=1``, ``%config``,
    ``%matplotlib``, ``%load_ext``) leave the kernel as the same cell would have: replayed
    here, quietly. The job records only those that succeeded there."""
    from IPython.utils.capture import capture_output

    for name, line in magics:
        if name == "env" and "=" not in line and " " not in line.strip():
            continue  # reading, not setting
        if name == "config" and "=" not in line:
            continue
        if name == "cd" and not line.strip().startswith("-q"):
            line = "-q " + line
        try:
            with capture_output():
                shell.run_line_magic(name, line)
        except Exception as e:
            print(f"clusterjupyter: %{name} {line} ran in the job but not in this kernel: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)


def pyplot_drew(drew: bool) -> None:
    """A cell that used pyplot in the job tells the kernel's inline backend so, as the same
    cell would have here: after the cell it then shows the figures this kernel's pyplot holds
    (one an earlier job left open under a file-only backend, one whose rendering failed in the
    job), before the job's own figures."""
    mpl = sys.modules.get("matplotlib")
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    if not drew or mpl is None or inline is None or "matplotlib.pyplot" not in sys.modules:
        return
    from .context import INLINE_BACKENDS

    if dict.get(mpl.rcParams, "backend") in INLINE_BACKENDS and mpl.is_interactive():
        inline.show._draw_called = True


class CellOutputs:
    """Publishes a job's rich outputs in the kernel as they arrive. Those the job showed after
    its cell ended (the figures the inline backend shows then) wait for the kernel's own
    ``post_execute``, so they come after the cell's value, as in the kernel."""

    def __init__(self, shell: Any, publish: Callable[[dict, dict], None]):
        self.shell = shell
        self.publish = publish
        self.after_cell = False
        self.held: list[tuple[dict, dict]] = []

    def __call__(self, data: dict, metadata: dict) -> None:
        if (metadata or {}).get("clusterjupyter") == "post_execute":
            self.after_cell = True
            return
        if self.after_cell:
            self.held.append((data, metadata))
        else:
            self.publish(data, metadata)

    def release(self) -> None:
        """Show what was held when the kernel finishes this cell (at once outside a cell)."""
        held, self.held = self.held, []
        if not held:
            return
        events = getattr(self.shell, "events", None)
        if events is None:
            for data, metadata in held:
                self.publish(data, metadata)
            return

        def once(*_: Any) -> None:
            events.unregister("post_execute", once)
            for data, metadata in held:
                self.publish(data, metadata)

        events.register("post_execute", once)


class OrderedFollower(Follower):
    """Follows a job's output in the job's order: a display comes after the stdout and stderr
    text the job had written before it (each display says how much that was)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.shown = {"stdout": 0, "stderr": 0}
        self.text = {"stdout": b"", "stderr": b""}
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                         for name in self.text}

    def pump(self) -> bool:
        t = self.backend.transport
        # displays first: every stream byte a display was written after is read after it
        order = ["displays", "stdout", "stderr"]
        chunks = {}
        for stream in order:
            chunk = t.read_from(self.files[stream], self.offsets[stream])
            if chunk:
                chunks[stream] = chunk
                self.offsets[stream] += len(chunk)
        for name in self.text:
            self.text[name] += chunks.get(name, b"")
        for msg in self._messages(chunks.get("displays", b"")):
            for name, upto in (msg.get("at") or {}).items():
                if name in self.text:
                    self._write(name, upto - self.shown[name])
            if self.publish is not None and "data" in msg:
                self.publish(msg["data"], msg.get("metadata", {}))
        for name in self.text:
            self._write(name, len(self.text[name]))
        return bool(chunks)

    def _messages(self, chunk: bytes) -> list[dict]:
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _write(self, name: str, n: int) -> None:
        if n <= 0:
            return
        piece, self.text[name] = self.text[name][:n], self.text[name][n:]
        self.shown[name] += len(piece)
        out = sys.stdout if name == "stdout" else sys.stderr
        out.write(self.decoders[name].decode(piece))
        out.flush()
