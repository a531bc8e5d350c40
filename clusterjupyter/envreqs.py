"""What a synced environment installs: the kernel's distributions, each as the cluster can
install it.

A distribution becomes one of

* a pinned requirement ``name==version``, installed from the package index (or from wheels
  downloaded here when the cluster is offline);
* a **local wheel**: an editable install, or one from a local directory or file (its
  ``direct_url.json`` says so), cannot come from an index: it is built into a wheel here
  (``pip wheel``), kept under the hash of its source so an unchanged source is never built (nor
  sent) again, and shipped content-addressed (:mod:`.envsync`);
* a direct reference ``name @ URL``: an install from a VCS (at its commit) or a remote archive;
* a **conda** package pinned like the others when its version is a pip version, or named in the
  plan with the reason it cannot be (:mod:`.envconda`).

The requirements' hash (which names the environment on the cluster) covers the pinned lines,
the Python minor version and each local wheel's source hash: a changed local package builds
another environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlparse

from . import envconda, envguard, envprobe
from . import paths as local_paths
from .errors import ClusterError

#: always in a synced environment (the runner uses them)
RUNTIME = ("dill", "tblib")
#: the kernel's machinery: imported by every kernel, never needed by a job
KERNEL_ONLY = frozenset({
    "clusterjupyter", "ipykernel", "jupyter-client", "jupyter-core", "pyzmq", "tornado", "comm",
    "debugpy", "nest-asyncio", "jupyter-server", "jupyterlab", "notebook", "ipywidgets",
    "widgetsnbextension", "pytest", "pluggy", "iniconfig", "pip", "setuptools", "wheel",
    "paramiko", "platformdirs", "tomli-w", "psutil", "pexpect", "ptyprocess", "appnope",
})
#: directories of a source tree that are not its source (left out of its hash)
NOT_SOURCE = frozenset({
    ".git", ".hg", ".svn", "__pycache__", "build", "dist", ".tox", ".nox", ".venv", "venv",
    "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints",
})


@dataclass(frozen=True)
class LocalDist:
    """A distribution installed from this machine's files: shipped as a wheel built here."""

    name: str          # normalized
    version: str
    source: str        # the project directory, or the wheel / sdist file
    editable: bool
    digest: str        # sha256 of the source (paths and contents)

    def describe(self) -> str:
        kind = "editable" if self.editable else "local"
        return f"{self.name} {self.version} ({kind}: {self.source})"


@dataclass
class Requirements:
    python_minor: str
    lines: list[str]
    local: list[LocalDist] = field(default_factory=list)
    #: (``name version``, why) of what cannot be installed with pip (named in the plan)
    unmapped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        doc: list[Any] = [self.python_minor, sorted(self.lines)]
        if self.local:
            doc.append(sorted(f"{d.name}=={d.version}@{d.digest}" for d in self.local))
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]

    def text(self, wheels: Mapping[str, str] | None = None) -> str:
        """``requirements.txt``: the pinned lines, then each local wheel by its path there
        (``wheels``: normalized name -> path of its wheel on the cluster)."""
        lines = sorted(self.lines)
        lines += [f"{d.name} @ file://{(wheels or {})[d.name]}" for d in self.local
                  if d.name in (wheels or {})]
        return "".join(f"{x}\n" for x in lines)

    def plan(self) -> list[str]:
        """What the sync installs and what it cannot, in lines (shown and kept in the log)."""
        out = [f"{len(self.lines)} pinned requirements (Python {self.python_minor})"]
        out += [f"local wheel built here: {d.describe()}" for d in self.local]
        if self.unmapped:
            out.append(f"not installable with pip ({len(self.unmapped)}), left out:")
            out += [f"  {name}: {why}" for name, why in self.unmapped]
        return out


# -- one distribution ---------------------------------------------------------------------------

def direct_reference(name: str, doc: Mapping[str, Any] | None) -> tuple[str, Any]:
    """How a distribution with ``direct_url.json`` content ``doc`` is installed elsewhere (pure):
    ``("index", None)``, ``("local", (path, editable))`` or ``("url", "name @ URL")``."""
    if not doc or not isinstance(doc.get("url"), str):
        return "index", None
    url = doc["url"]
    parsed = urlparse(url)
    vcs = doc.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs"):
        ref = f"{vcs['vcs']}+{url}"
        if vcs.get("commit_id"):
            ref += f"@{vcs['commit_id']}"
        if doc.get("subdirectory"):
            ref += f"#subdirectory={doc['subdirectory']}"
        return "url", f"{name} @ {ref}"
    if parsed.scheme == "file":
        editable = bool((doc.get("dir_info") or {}).get("editable"))
        return "local", (unquote(parsed.path), editable)
    return "url", f"{name} @ {url}"


def source_digest(path: str) -> str:
    """sha256 of a source directory's files (relative paths and contents, build products left
    out) or of one file."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in NOT_SOURCE and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(root, name)
            try:
                with open(full, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            h.update(f"{rel}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def _resolve(dist: metadata.Distribution) -> tuple[str, Any]:
    """``("line", str)``, ``("local", LocalDist)`` or ``("unmapped", why)`` for one
    distribution of the kernel."""
    name = envprobe.normalize(dist.metadata["Name"])
    version = dist.version
    try:
        doc = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        doc = None
    kind, value = direct_reference(name, doc)
    if kind == "url":
        return "line", value
    if kind == "local":
        path, editable = value
        if not os.path.exists(path):
            return "unmapped", f"installed from {path}, which is gone"
        return "local", LocalDist(name, version, path, editable, source_digest(path))
    if envconda.is_conda_installed(dist.read_text("INSTALLER")):
        line, why = envconda.pip_requirement(name, version)
        return ("line", line) if line else ("unmapped", f"conda package: {why}")
    return "line", f"{name}=={version}"


def _distribution(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def kernel_requirements(packages: Iterable[str] | None = None, modules: Iterable[str] = (),
                        whole: bool = False, prefix: str | None = None) -> Requirements:
    """The kernel's distributions for ``packages`` (names: distributions, or conda packages of
    the kernel's conda environment at ``prefix``), else those providing ``modules``, else every
    imported module's; the whole environment with ``whole``."""
    packages = list(packages or ())
    names: set[str] = set(RUNTIME)
    unmapped: list[tuple[str, str]] = []
    recs = envconda.records(prefix or sys.prefix)
    if whole:
        names |= {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]}
        unmapped += envconda.without_python(recs)
    elif packages:
        for name in packages:
            if _distribution(name) is not None:
                names.add(name)
                continue
            rec = envconda.by_conda_name(recs, name)
            if rec is None:
                raise ClusterError(f"{name!r} is not installed in the kernel's environment")
            line, why = envconda.record_requirement(rec)
            if line is None:
                unmapped.append((f"{rec['name']} {rec.get('version', '')}".strip(), why))
            else:
                names.add(line.split("==", 1)[0])
    else:
        mods = set(modules) or {m.split(".", 1)[0] for m in list(sys.modules)}
        table = envguard._module_dists()
        for mod in mods - set(sys.stdlib_module_names):
            names.update(table.get(mod, ()))
    lines: set[str] = set()
    local: dict[str, LocalDist] = {}
    for name in sorted(names, key=envprobe.normalize):
        if envprobe.normalize(name) in KERNEL_ONLY and not packages:
            continue
        dist = _distribution(name)
        if dist is None:
            raise ClusterError(f"{name!r} is not installed in the kernel's environment")
        kind, value = _resolve(dist)
        if kind == "line":
            lines.add(value)
        elif kind == "local":
            local[value.name] = value
        else:
            unmapped.append((f"{envprobe.normalize(name)} {dist.version}", value))
    return Requirements("%d.%d" % sys.version_info[:2], sorted(lines),
                        sorted(local.values(), key=lambda d: d.name),
                        sorted(set(unmapped)))


# -- wheels of local distributions, built here --------------------------------------------------

def wheel_cache() -> str:
    return os.path.join(local_paths.data_dir(), "wheels")


def local_wheel(dist: LocalDist, say: Callable[[str], None] = print) -> str:
    """The wheel of a local distribution: the file itself when it is one, else built here once
    per source hash (``pip wheel --no-deps``) and kept in the data directory."""
    if dist.source.endswith(".whl") and os.path.isfile(dist.source):
        return dist.source
    cache = os.path.join(wheel_cache(), dist.digest)
    try:
        found = sorted(n for n in os.listdir(cache) if n.endswith(".whl"))
    except OSError:
        found = []
    if found:
        return os.path.join(cache, found[0])
    say(f"building a wheel of {dist.describe()} here (pip wheel)")
    os.makedirs(wheel_cache(), mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=wheel_cache()) as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                               "--disable-pip-version-check", "-q", "-w", tmp, dist.source],
                              capture_output=True, text=True)
        built = sorted(n for n in os.listdir(tmp) if n.endswith(".whl"))
        if done.returncode != 0 or not built:
            raise ClusterError(f"building a wheel of {dist.name} from {dist.source} failed "
                               f"here:\n{(done.stderr or done.stdout).strip()[-2000:]}")
        os.makedirs(cache, mode=0o700, exist_ok=True)
        os.replace(os.path.join(tmp, built[0]), os.path.join(cache, built[0]))
    return os.path.join(cache, built[0])
