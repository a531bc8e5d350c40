"""What a job's interpreter has: its Python, its distributions and its importable modules.

Learned with one command (a small Python snippet run by the profile's interpreter after its
prelude and environment, exactly as a job would start it) and cached per (profile target,
interpreter): in memory for the life of the process, and in a small file in the user's data
directory for later processes. The file's entry carries the modification times of the
interpreter's site-packages directories; a new process checks them with one ``stat`` and probes
again when something was installed or removed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from . import paths as local_paths
from .errors import ClusterError

#: run by the job's interpreter; standard library only (Python 3.8+), one JSON line out
PROBE = r"""
import json, os, pkgutil, sys
sys.path = [p for p in sys.path if p not in ("", ".")]   # as a job: not the login directory
try:
    from importlib import metadata
    dists = {}
    for d in metadata.distributions():
        n = (d.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
        if n and n not in dists:
            dists[n] = d.version
except Exception:
    dists = {}
try:
    import site
    sp = list(site.getsitepackages()) + [site.getusersitepackages()]
except Exception:
    sp = []
sp += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
dirs = sorted({p for p in sp if os.path.isdir(p)})
mods = sorted({m.name for m in pkgutil.iter_modules()} | set(sys.builtin_module_names))
try:
    import importlib.util as u
    cj = u.find_spec("clusterjupyter") is not None
except Exception:
    cj = False
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
                  "prefix": sys.prefix, "dists": dists, "modules": mods, "dirs": dirs,
                  "mtimes": [int(os.stat(p).st_mtime) for p in dirs],
                  "clusterjupyter": cj}))
"""
#: one line per directory: its mtime in seconds, or "-" when it is gone
STAT = 'for d in "$@"; do stat -c %Y "$d" 2>/dev/null || echo -; done'
CACHE_FILE = "interpreters.json"


@dataclass
class InterpreterInfo:
    """What one interpreter on the cluster has (the probe's answer)."""

    python: str
    executable: str
    prefix: str = ""
    dists: dict[str, str] = field(default_factory=dict)    # normalized name -> version
    modules: list[str] = field(default_factory=list)      # importable top-level names
    dirs: list[str] = field(default_factory=list)         # site-packages directories
    mtimes: list[int] = field(default_factory=list)       # their mtimes (s), same order
    clusterjupyter: bool = False                          # the package imports there

    @property
    def minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    def version(self, dist: str) -> str | None:
        return self.dists.get(normalize(dist))

    def has_module(self, name: str) -> bool:
        return name in self._modules

    @property
    def _modules(self) -> frozenset[str]:
        s = self.__dict__.get("_mods")
        if s is None:
            s = self.__dict__["_mods"] = frozenset(self.modules)
        return s

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()}


def normalize(dist: str) -> str:
    """PEP 503 normalized distribution name."""
    return dist.lower().replace("_", "-").replace(".", "-")


def launch_lines(profile: Any, interpreter: str | None = None) -> list[str]:
    """Shell lines starting ``interpreter`` (default: the profile's) the way a job does: the
    prelude, the profile's environment, then ``exec INTERPRETER -c "$1"``."""
    lines = list(profile.prelude)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in profile.env.items()]
    lines.append(f'exec {interpreter or profile.interpreter} -c "$1"')
    return lines


def cache_key(profile: Any, interpreter: str | None = None) -> str:
    """Which interpreter this is: where (host, port, user), how it starts, with what."""
    # a local interpreter inherits this process's PYTHONPATH
    inherited = "" if profile.host else os.environ.get("PYTHONPATH", "")
    ident = json.dumps([profile.host or "", profile.port, profile.user or "",
                        interpreter or profile.interpreter, list(profile.prelude),
                        sorted(profile.env.items()), inherited])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


_memory: dict[str, InterpreterInfo] = {}
_lock = threading.Lock()


def _cache_path() -> str:
    return os.path.join(local_paths.data_dir(), CACHE_FILE)


def _read_file() -> dict[str, Any]:
    try:
        with open(_cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_file(key: str, info: InterpreterInfo) -> None:
    from .jobdir import write_atomic

    data = _read_file()
    data[key] = info.to_json()
    os.makedirs(local_paths.data_dir(), mode=0o700, exist_ok=True)
    write_atomic(_cache_path(), json.dumps(data).encode(), 0o600)


def probe(transport: Any, profile: Any, interpreter: str | None = None,
          timeout: float = 120) -> InterpreterInfo:
    """Run the probe through ``transport`` (one command); raise ClusterError saying what to set
    when the interpreter does not start."""
    interp = interpreter or profile.interpreter
    done = transport.shell("\n".join(launch_lines(profile, interp)), PROBE, check=False,
                           timeout=timeout)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not line.startswith("{"):
        detail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise ClusterError(
            f"the interpreter {interp!r} of profile {profile.name!r} did not start on "
            f"{transport.where} (exit code {done.returncode}): {detail or 'no output'}. Set the "
            f"profile's 'python' to a Python 3 interpreter there (and its 'prelude' to what "
            f"makes it available, e.g. \"module load python\")")
    doc = json.loads(line)
    return InterpreterInfo(**{k: doc[k] for k in InterpreterInfo.__dataclass_fields__
                              if k in doc})


def _current_mtimes(transport: Any, dirs: list[str]) -> list[int | None]:
    if transport.shares_filesystem:
        out: list[int | None] = []
        for d in dirs:
            try:
                out.append(int(os.stat(d).st_mtime))
            except OSError:
                out.append(None)
        return out
    done = transport.shell(STAT, *dirs, check=False, timeout=30)
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != len(dirs):
        return [None] * len(dirs)
    return [int(w) if w.isdigit() else None for w in words]


def interpreter_info(transport: Any, profile: Any, interpreter: str | None = None,
                     refresh: bool = False) -> InterpreterInfo:
    """The (cached) probe answer for ``profile``'s interpreter (or ``interpreter``)."""
    key = cache_key(profile, interpreter)
    with _lock:
        if not refresh and key in _memory:
            return _memory[key]
    info = None
    if not refresh:
        doc = _read_file().get(key)
        if isinstance(doc, dict):
            try:
                cached = InterpreterInfo(**doc)
            except TypeError:
                cached = None
            if cached is not None and _current_mtimes(transport, cached.dirs) == cached.mtimes:
                info = cached
    if info is None:
        info = probe(transport, profile, interpreter)
        try:
            _write_file(key, info)
        except OSError:
            pass
    with _lock:
        _memory[key] = info
    return info


def forget(profile: Any | None = None, interpreter: str | None = None) -> None:
    """Drop the in-memory answer (all of them when ``profile`` is None)."""
    with _lock:
        if profile is None:
            _memory.clear()
        else:
            _memory.pop(cache_key(profile, interpreter), None)
