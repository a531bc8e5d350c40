"""Before a job is submitted: where it runs (the kernel's working directory, mapped, or a staged
copy), and which files the cell refers to (:func:`candidates`); sizes in the user's words and
the error that refuses a cell whose files cannot travel. Part of :mod:`clusterjupyter.staging`.
"""

from __future__ import annotations

import ast
import os
import pathlib
import shlex
import types
from typing import Any, Iterable, Mapping

from .errors import ClusterError
from .resources import size_in

#: defaults of the profile's stage_limit, stage_max_files and return_limit
DEFAULT_STAGE_LIMIT = 1 << 30
DEFAULT_STAGE_MAX_FILES = 1000
DEFAULT_RETURN_LIMIT = 256 << 20
#: string literals that name a place but never a file the cell means to read
_TOO_BROAD = frozenset({"", ".", "./", "..", "/", "~", "-"})
#: calls whose string arguments are command lines: their words are candidates too
_COMMAND_CALLS = frozenset({"system", "getoutput", "run_line_magic", "run_cell_magic"})


class StagingError(ClusterError):
    """The cell's files cannot travel (over a limit); nothing was submitted."""


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"512K"``, ``"100M"``, ``"1.5G"``, ``"2GiB"``, ``"1T"``."""
    n = size_in(value, 1, "size", "use bytes or a size like 512K, 100M, 2G")
    if n < 0:
        raise ValueError(f"invalid size {value!r}: must not be negative")
    return int(n)


def format_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- where the job runs -------------------------------------------------------------------------

def is_within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def map_path(path: str, path_map: Mapping[str, str]) -> str | None:
    """``path`` (absolute, here) as the cluster sees it through ``path_map``; None if no entry
    covers it (the longest matching local prefix wins)."""
    best = None
    for local, remote in path_map.items():
        local = os.path.normpath(os.path.expanduser(local))
        if is_within(path, local) and (best is None or len(local) > len(best[0])):
            best = (local, remote)
    if best is None:
        return None
    rest = os.path.relpath(path, best[0])
    return best[1].rstrip("/") if rest == "." else posixpath_join(best[1], rest)


def posixpath_join(a: str, b: str) -> str:
    return a.rstrip("/") + "/" + b.replace(os.sep, "/")


def placement(profile: Any, cwd: str) -> str | None:
    """The job's working directory on the cluster when its host sees the kernel's files
    (shared mode), else None (staged mode)."""
    if profile.path_map:
        mapped = map_path(cwd, profile.path_map)
        if mapped is not None:
            return mapped
    shared = profile.shared_fs
    if shared is None:
        shared = not profile.remote and profile.scheduler != "kubernetes"
    return cwd if shared else None


# -- what the cell refers to --------------------------------------------------------------------

def _strings_in_code(code: types.CodeType) -> Iterable[str]:
    for const in code.co_consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, types.CodeType):
            yield from _strings_in_code(const)


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False)
    except ValueError:
        return text.split()


def candidates(source: str, values: Mapping[str, Any]) -> list[str]:
    """Strings that may name files the cell uses (not yet checked against the filesystem): the
    cell's string literals, the words of its ``!cmd`` and magic arguments, string constants of
    notebook functions among ``values``, and ``pathlib`` values among them (also one level
    inside lists, tuples, sets and dict values)."""
    out: dict[str, None] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out[node.value] = None
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in _COMMAND_CALLS):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        out.update(dict.fromkeys(_words(arg.value)))
    for value in values.values():
        items = [value]
        if isinstance(value, (list, tuple, set, frozenset)):
            items += list(value)[:1000]
        elif isinstance(value, dict):
            items += list(value.values())[:1000]
        for item in items:
            if isinstance(item, pathlib.PurePath):
                out[str(item)] = None
            elif (isinstance(item, types.FunctionType)
                  and getattr(item, "__module__", None) == "__main__"):
                out.update(dict.fromkeys(_strings_in_code(item.__code__)))
    return [s for s in out if _plausible(s)]


def _plausible(s: str) -> bool:
    return 0 < len(s) <= 4096 and "\n" not in s and "\0" not in s and s not in _TOO_BROAD \
        and not s.startswith(("http://", "https://"))
