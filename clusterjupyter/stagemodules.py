"""Local modules: a module the cell uses whose file is neither in the standard library nor in an
installed ``site-packages`` (:func:`is_local`); its files travel with the job (staged mode) or
its directory goes on the job's ``sys.path`` (shared mode). Part of
:mod:`clusterjupyter.staging`.
"""

from __future__ import annotations

import ast
import functools
import os
import site
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ._workdir import SKIP_DIRS
from .serialize import Blob
from .stagefind import is_within
# -- local modules ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(os.path.realpath(p))
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
    except AttributeError:
        pass
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user, str):
        roots.add(os.path.realpath(user))
    for p in sys.path:
        if p and os.path.basename(p) in ("site-packages", "dist-packages"):
            roots.add(os.path.realpath(p))
    return tuple(sorted(roots))


def is_local(module: types.ModuleType) -> bool:
    """A module of the user's own: its file is neither in the standard library nor in an
    installed site-packages directory (so it lives beside the notebook, in a project directory
    on ``sys.path``, or is an editable install's source). clusterjupyter itself is not (the
    runner ships it)."""
    name = module.__name__.split(".")[0]
    if name in sys.stdlib_module_names or name in ("__main__", "clusterjupyter"):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return not any(is_within(real, root) for root in _installed_roots())


@dataclass
class LocalModule:
    name: str
    root: str           # the sys.path entry it is imported from
    files: list[str]    # paths relative to root


def local_module(name: str) -> LocalModule | None:
    """The files of the loaded top-level module ``name`` if it is local (:func:`is_local`)."""
    module = sys.modules.get(name)
    if module is None or not is_local(module):
        return None
    path = os.path.realpath(str(module.__file__))
    if os.path.basename(path).startswith("__init__."):
        pkg = os.path.dirname(path)
        root = os.path.dirname(pkg)
        files = []
        for dirpath, dirnames, filenames in os.walk(pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                                 and not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.endswith((".pyc", ".pyo")) and not fn.startswith("."):
                    files.append(os.path.relpath(os.path.join(dirpath, fn), root))
        return LocalModule(name, root, files)
    return LocalModule(name, os.path.dirname(path), [os.path.basename(path)])


_local_cache: tuple[int, frozenset[str]] = (-1, frozenset())


def loaded_local_modules() -> frozenset[str]:
    """Top-level names of the local modules this kernel has imported (recomputed when the
    number of loaded modules changes)."""
    global _local_cache
    count = len(sys.modules)
    if _local_cache[0] != count:
        names = frozenset(name for name, mod in list(sys.modules.items())
                          if "." not in name and isinstance(mod, types.ModuleType)
                          and is_local(mod))
        _local_cache = (count, names)
    return _local_cache[1]


def _named_in_pickle(blob: Blob, names: Iterable[str], limit: int = 64 << 20) -> set[str]:
    """Which of ``names`` occur in the blob's pickle stream (its out-of-band buffers, the bulk
    of arrays, are not searched): a class or function of a module is pickled by its name."""
    if not names or len(blob.parts) < 2 or blob.parts[1].nbytes > limit:
        return set()
    data = bytes(blob.parts[1])
    return {n for n in names if n.encode() in data}


def modules_used(source: str, namespace_modules: Mapping[str, str], values: Mapping[str, Any],
                 blobs: Mapping[str, Blob] = {}) -> set[str]:
    """Top-level names of the modules a cell may import on the cluster: modules among its
    inputs, modules its values and functions come from, those its cell imports, and the modules
    named in its pickled inputs."""
    names = {m.split(".")[0] for m in namespace_modules.values()}
    for value in values.values():
        for obj in (value, type(value)):
            mod = getattr(obj, "__module__", None)
            if isinstance(mod, str):
                names.add(mod.split(".")[0])
    try:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    except SyntaxError:
        pass
    local = loaded_local_modules()
    for blob in blobs.values():
        names.update(_named_in_pickle(blob, local - names))
    return {n for n in names if n in sys.modules}
