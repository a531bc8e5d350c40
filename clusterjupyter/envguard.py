"""The environment guard: before a job is submitted, the packages its inputs and its cell need
are compared with what the job's interpreter has.

* :func:`needed_modules` — the top-level modules the pickled inputs reference (read from the
  pickle streams' global references), the modules the cell uses by name, and the cell's imports;
* :func:`kernel_side` — the kernel's version of each (its Python, dill, each distribution);
* :func:`compare` — a pure decision: what refuses the job (a missing package, another Python
  minor version, a major/minor difference of a package whose pickles are bound to its version)
  and what only warns (any other difference);
* :func:`check` — the three over a backend's cached :mod:`.envprobe` answer; raises
  :class:`EnvironmentMismatch` with a table and the fix, or returns the warning line.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Iterable, Mapping

from .envprobe import InterpreterInfo, normalize
from .errors import ClusterError

#: distributions whose pickles only load with the same major.minor version
VERSION_BOUND = frozenset({
    "numpy", "pandas", "scipy", "scikit-learn", "pyarrow", "polars", "xarray", "torch",
    "tensorflow", "jax", "jaxlib", "statsmodels", "anndata", "networkx", "dill", "cloudpickle",
    "numba", "sympy", "astropy", "shapely", "geopandas", "lightgbm", "xgboost",
})
#: modules never compared: the standard library, our own package, the notebook itself
_OWN = frozenset({"__main__", "clusterjupyter", "builtins", "__builtin__", "_frozen_importlib",
                  "copy_reg", "copyreg"})
_GLOBAL_RE = re.compile(rb"\x8c([\x01-\x7f])([A-Za-z_][\w.]*)\x94?(?:\x95[\s\S]{8})?"
                        rb"\x8c([\x01-\xff])([\w.<>]*)\x94?\x93")


class EnvironmentMismatch(ClusterError):
    """The job's interpreter cannot load what the job needs (nothing was submitted)."""

    def __init__(self, message: str, rows: list["Row"]):
        super().__init__(message)
        self.rows = rows


@dataclass
class Row:
    package: str
    kernel: str
    cluster: str
    why: str = ""
    refuse: bool = False


@dataclass
class Verdict:
    rows: list[Row] = field(default_factory=list)

    @property
    def refused(self) -> list[Row]:
        return [r for r in self.rows if r.refuse]

    @property
    def warned(self) -> list[Row]:
        return [r for r in self.rows if not r.refuse]


# -- what the job needs -------------------------------------------------------------------------

def pickle_modules(data: bytes | memoryview) -> set[str]:
    """Top-level modules a protocol-4/5 pickle stream references by global name."""
    out = set()
    for m in _GLOBAL_RE.finditer(data):
        mod, name = m.group(2), m.group(4)
        if len(mod) == m.group(1)[0] and len(name) == m.group(3)[0]:
            out.add(mod.split(b".", 1)[0].decode())
    return out


def cell_imports(source: str) -> set[str]:
    """Top-level modules the cell imports (absolute imports anywhere in the cell)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".", 1)[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".", 1)[0])
    return out


def needed_modules(blobs: Iterable[Any], source: str, used_modules: Iterable[str],
                   shipped: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """``(by pickles, by the cell)``: third-party top-level modules, without the standard
    library and the modules that travel with the job (``shipped``)."""
    pickled: set[str] = set()
    for blob in blobs:
        parts = getattr(blob, "parts", None)
        if parts and len(parts) > 1 and bytes(parts[0][:4]) == b"CJB1":
            pickled |= pickle_modules(parts[1])
    by_cell = cell_imports(source) | {m.split(".", 1)[0] for m in used_modules}
    drop = set(sys.stdlib_module_names) | _OWN | {m.split(".", 1)[0] for m in shipped}
    return pickled - drop, by_cell - drop - pickled


# -- the kernel's side --------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _module_dists() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


@lru_cache(maxsize=512)
def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def kernel_side(modules: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``module -> (distribution, version)`` in the kernel, for modules a distribution
    provides (local modules and namespace directories have none and are not compared)."""
    out = {}
    table = _module_dists()
    for mod in modules:
        dists = table.get(mod)
        if not dists:
            continue
        version = _dist_version(dists[0])
        if version:
            out[mod] = (dists[0], version)
    return out


def forget_kernel_versions() -> None:
    """The kernel's environment changed (a ``pip install`` in the kernel): read it again."""
    _module_dists.cache_clear()
    _dist_version.cache_clear()


# -- the decision -------------------------------------------------------------------------------

def _release(version: str) -> tuple[int, ...]:
    nums = []
    for part in re.split(r"[.+-]", version):
        m = re.match(r"\d+", part)
        if not m:
            break
        nums.append(int(m.group()))
    return tuple(nums) or (0,)


def compare(kernel_python: str, kernel_dill: str | None, used_dill: bool,
            pickled: dict[str, tuple[str, str]], by_cell: dict[str, tuple[str, str]],
            missing_by_cell: set[str], info: InterpreterInfo) -> Verdict:
    """Which differences refuse the job and which only warn (pure: no I/O).

    ``pickled`` / ``by_cell``: module -> (distribution, kernel version) for the modules the
    pickles reference / the cell uses; ``missing_by_cell``: modules of either kind that the
    interpreter cannot import at all (decided by the caller from ``info.modules``).
    """
    v = Verdict()
    kp, rp = _release(kernel_python), _release(info.python)
    if kp[:2] != rp[:2]:
        v.rows.append(Row("python", kernel_python, info.python, "another minor version", True))
    elif kp != rp:
        v.rows.append(Row("python", kernel_python, info.python, "patch level"))
    remote_dill = info.version("dill")
    if kernel_dill and remote_dill is None:
        v.rows.append(Row("dill", kernel_dill, "missing", "the runner needs it", used_dill))
    elif kernel_dill and remote_dill and remote_dill != kernel_dill:
        bound = _release(kernel_dill)[:2] != _release(remote_dill)[:2]
        v.rows.append(Row("dill", kernel_dill, remote_dill,
                          "major/minor" if bound else "patch level", bound and used_dill))
    seen = {"dill", "python"}
    for mods, from_pickle in ((pickled, True), (by_cell, False)):
        for mod, (dist, version) in sorted(mods.items()):
            name = normalize(dist)
            if name in seen:
                continue
            seen.add(name)
            if mod in missing_by_cell:
                v.rows.append(Row(dist, version, "missing", "not installed", True))
                continue
            remote = info.version(dist)
            if remote is None or remote == version:
                continue
            minor = _release(version)[:2] != _release(remote)[:2]
            refuse = minor and from_pickle and name in VERSION_BOUND
            why = "major/minor" if minor else "patch level"
            if minor and not refuse:
                why += "; the inputs do not depend on it" if not from_pickle \
                    else "; its pickles usually load"
            v.rows.append(Row(dist, version, remote, why, refuse))
    return v


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table (package, kernel, cluster, why)."""
    head = Row("package", "kernel", "cluster", "")
    w = [max(len(getattr(r, a)) for r in [head, *rows]) for a in ("package", "kernel", "cluster")]
    return "\n".join(f"  {r.package:<{w[0]}}  {r.kernel:<{w[1]}}  {r.cluster:<{w[2]}}  {r.why}"
                     .rstrip() for r in [head, *rows])


# -- over a backend -----------------------------------------------------------------------------

def job_needs(sub: Any, profile: str) -> tuple[dict[str, tuple[str, str]],
                                               dict[str, tuple[str, str]], bool]:
    """``(by pickles, by the cell, uses dill)`` for a submission, with the kernel's
    distribution and version of each module; remembered per profile for ``env sync``."""
    shipped = set(getattr(sub.workdir, "module_names", None) or ())
    pickled_mods, cell_mods = needed_modules(sub.packed.blobs.values(), sub.source,
                                             sub.packed.modules.values(), shipped)
    pickled = kernel_side(pickled_mods)
    by_cell = kernel_side(cell_mods)
    # a shipped module that a distribution provides (an editable install's source) is not
    # compared, but env sync installs its distribution (its dependencies, data, metadata)
    _NEEDED.setdefault(profile, set()).update(pickled, by_cell, kernel_side(shipped))
    used_dill = any(getattr(b, "used_dill", False) for b in sub.packed.blobs.values())
    return pickled, by_cell, used_dill


@lru_cache(maxsize=256)
def _requires(dist: str) -> tuple[str, ...]:
    """The distributions ``dist`` needs here (its requirements whose markers hold, no
    extras)."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in metadata.requires(dist) or ():
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return tuple(out)


def shipped_dependencies(shipped: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``dependency -> (the shipped distribution needing it, its version here)`` for the
    distributions whose source travels with the job (an editable install's modules)."""
    out: dict[str, tuple[str, str]] = {}
    for _mod, (dist, _version) in kernel_side(shipped).items():
        try:
            needs = _requires(dist)
        except metadata.PackageNotFoundError:
            continue
        for dep in needs:
            version = _dist_version(dep)
            if version:
                out.setdefault(normalize(dep), (dist, version))
    return out


def dependency_rows(deps: Mapping[str, tuple[str, str]], info: InterpreterInfo) -> list[Row]:
    """Warnings (pure): a dependency of a shipped distribution that the interpreter lacks.
    Not refused: a package may import it only where it is used."""
    return [Row(dep, version, "missing", f"needed by {by}") for dep, (by, version)
            in sorted(deps.items()) if info.version(dep) is None]


def check(info: InterpreterInfo, sub: Any, profile: str, interpreter: str,
          where: str) -> str | None:
    """Raise EnvironmentMismatch when the job cannot load its inputs on ``info``'s interpreter;
    return a one-line warning for differences that do not stop it (None when all match)."""
    pickled, by_cell, used_dill = job_needs(sub, profile)
    missing = {m for m in (*pickled, *by_cell) if not info.has_module(m)}
    verdict = compare(_python(), _dist_version("dill"), used_dill, pickled, by_cell, missing,
                      info)
    shipped = set(getattr(sub.workdir, "module_names", None) or ())
    if shipped:
        verdict.rows += dependency_rows(shipped_dependencies(shipped), info)
    if verdict.refused:
        raise EnvironmentMismatch(
            f"the job's interpreter cannot load what this cell needs, so nothing was "
            f"submitted.\n{interpreter} on {where} ({info.executable}):\n"
            f"{table(verdict.rows)}\n"
            f"Fix: set the profile's 'python' to an environment with these versions, or build "
            f"one on the cluster with `%cluster env sync {profile}`.", verdict.refused)
    if verdict.warned:
        return ("clusterjupyter: versions differ on " + profile + " (the job runs): "
                + "; ".join(f"{r.package} {r.kernel} here, {r.cluster} there"
                            + (f" ({r.why})" if r.cluster == "missing" else "")
                            for r in verdict.warned)
                + (f"; `%cluster env sync {profile}` installs what is missing"
                   if any(r.cluster == "missing" for r in verdict.warned) else ""))
    return None


_NEEDED: dict[str, set[str]] = {}


def needed_by_profile(profile: str) -> set[str]:
    """Every third-party module the guard found in this kernel's cells for ``profile``."""
    return set(_NEEDED.get(profile, ()))


def _python() -> str:
    return "%d.%d.%d" % sys.version_info[:3]
