"""Environment sync: build on the cluster an environment matching the kernel's, once.

The requirements are the kernel's distributions pinned to their versions (from
:mod:`importlib.metadata`): by default those providing the modules the environment guard found
in this kernel's cells for the profile (else every module the kernel has imported, without the
kernel's own machinery), plus dill and tblib; ``--all`` takes the whole kernel environment,
``--packages`` names them. The environment lives in ``WORKDIR/envs/<hash of the requirements
and Python minor version>``: built with ``uv`` when the cluster has it, else ``python -m venv``
and pip, as a detached process whose log (``build.log``) stays in the directory; the marker
``.complete`` is written last. A later sync with the same hash reuses it; a changed kernel
environment gives another hash, hence another environment. The profile's jobs then run with
the environment's interpreter (remembered in the user's data directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable

from . import envguard, envprobe
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
ACTIVE_FILE = "synced-envs.json"
MARKER = ".complete"
FAILED = ".failed"
BUILD = r"""
set -e
dir=$1; base=$2; minor=$3
cd "$dir"
trap '[ -e .complete ] || touch .failed' EXIT
py=$base
if ! "$base" -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != sys.argv[1])' "$minor" \
    && command -v "python$minor" >/dev/null 2>&1; then py=$(command -v "python$minor"); fi
set --
[ -d wheels ] && set -- --no-index --find-links wheels
if command -v uv >/dev/null 2>&1; then
  echo "clusterjupyter: uv venv --python $py"
  uv venv --python "$py" venv
  uv pip install --python venv/bin/python "$@" -r requirements.txt
else
  echo "clusterjupyter: $py -m venv, pip install $*"
  "$py" -m venv venv
  venv/bin/python -m pip install --disable-pip-version-check --no-input "$@" -r requirements.txt
fi
venv/bin/python -c "import sys; print('clusterjupyter: built', sys.version.split()[0])"
touch .complete
"""


@dataclass
class Requirements:
    python_minor: str
    lines: list[str]

    @property
    def digest(self) -> str:
        text = json.dumps([self.python_minor, sorted(self.lines)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def text(self) -> str:
        return "".join(f"{x}\n" for x in sorted(self.lines))


def _dist_of(module: str) -> list[str]:
    return envguard._module_dists().get(module, [])


def kernel_requirements(packages: Iterable[str] | None = None, modules: Iterable[str] = (),
                        whole: bool = False) -> Requirements:
    """The kernel's pinned distributions for ``packages`` (names), else those providing
    ``modules``, else every imported module's; the whole environment with ``whole``."""
    names: set[str] = set(RUNTIME)
    if whole:
        names |= {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]}
    elif packages:
        names |= set(packages)
    else:
        mods = set(modules) or {m.split(".", 1)[0] for m in list(sys.modules)}
        for mod in mods - set(sys.stdlib_module_names):
            names.update(_dist_of(mod))
    lines = []
    for name in sorted(names, key=envprobe.normalize):
        if envprobe.normalize(name) in KERNEL_ONLY and not packages:
            continue
        try:
            lines.append(f"{envprobe.normalize(name)}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise ClusterError(f"{name!r} is not installed in the kernel's environment") from None
    return Requirements("%d.%d" % sys.version_info[:2], sorted(set(lines)))


# -- which environment a profile uses -----------------------------------------------------------

def _active_path() -> str:
    return os.path.join(local_paths.data_dir(), ACTIVE_FILE)


def _read_active() -> dict[str, Any]:
    try:
        with open(_active_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def active(profile: Any) -> dict[str, Any] | None:
    """The synced environment the profile's jobs use (``{"dir", "python", "digest",
    "requirements"}``), or None."""
    entry = _read_active().get(_active_key(profile))
    return entry if isinstance(entry, dict) else None


def _active_key(profile: Any) -> str:
    """One profile, its interpreter and its work root (where its environments live)."""
    return f"{profile.name}:{envprobe.cache_key(profile)}:{profile.work_root}"


def _set_active(profile: Any, entry: dict[str, Any] | None) -> None:
    from .jobdir import write_atomic

    data = _read_active()
    key = _active_key(profile)
    if entry is None:
        data.pop(key, None)
    else:
        data[key] = entry
    os.makedirs(local_paths.data_dir(), mode=0o700, exist_ok=True)
    write_atomic(_active_path(), json.dumps(data, indent=1).encode(), 0o600)


def interpreter(profile: Any) -> str:
    """The interpreter a profile's jobs run with: its synced environment's, or its own."""
    if profile.environment != "off":
        entry = active(profile)
        if entry:
            return shlex.quote(entry["python"])
    return profile.interpreter


# -- build, list, prune -------------------------------------------------------------------------

def envs_root(backend: Any) -> str:
    return posixpath.join(backend.root, "envs")


def sync(backend: Any, reqs: Requirements, say: Callable[[str], None] = print,
         timeout: float = 3600, poll: float = 1.0, offline: bool | None = None) -> dict[str, Any]:
    """Build (or reuse) the environment for ``reqs`` on ``backend``'s cluster and make it the
    profile's. Returns its entry with ``"built"`` (False when it was already there) and
    ``"seconds"``. Raises ClusterError with the build log's tail when the build fails.
    ``offline`` (default: the profile's ``env_offline``): the wheels are downloaded here and
    shipped through the blob store; the cluster installs from them only."""
    if offline is None:
        offline = bool(getattr(backend.profile, "env_offline", False))
    t0 = time.perf_counter()
    profile = backend.profile
    transport = getattr(backend.transport, "inner", backend.transport)
    base = envprobe.interpreter_info(transport, profile)
    d = posixpath.join(envs_root(backend), reqs.digest)
    python = posixpath.join(d, "venv", "bin", "python")
    marker, failed, log = (posixpath.join(d, n) for n in (MARKER, FAILED, "build.log"))
    state = transport.existing([marker, failed, d])
    built = marker not in state
    if built:
        if failed in state:
            transport.remove_tree(d)
            state = set()
        if d not in state:
            transport.makedirs(d)
            if offline:
                ship_wheels(backend, transport, reqs, posixpath.join(d, "wheels"), say)
            transport.write(posixpath.join(d, "requirements.txt"), reqs.text().encode())
            lines = envprobe.launch_lines(profile)[:-1]
            argv = ["sh", "-c", "\n".join([*lines, BUILD]), "sh", d, base.executable,
                    reqs.python_minor]
            say(f"building the environment {reqs.digest} on {transport.where} "
                f"({len(reqs.lines)} requirements; log: {log})")
            transport.spawn(argv, log)
        _follow(transport, log, marker, failed, say, timeout, poll)
    entry = {"dir": d, "python": python, "digest": reqs.digest, "requirements": reqs.lines,
             "python_minor": reqs.python_minor}
    _set_active(profile, entry)
    envprobe.forget(profile, shlex.quote(python))
    return {**entry, "built": built, "seconds": round(time.perf_counter() - t0, 3)}


def ship_wheels(backend: Any, transport: Any, reqs: Requirements, wheels: str,
                say: Callable[[str], None]) -> int:
    """Download the wheels of ``reqs`` (and their dependencies) here with pip, put each under
    its content address in the blob store (an unchanged one is not sent again) and link them
    into ``wheels``. The cluster must share this machine's platform. Returns how many were
    sent."""
    import subprocess
    import tempfile

    from .serialize import Blob

    with tempfile.TemporaryDirectory(prefix="cj-wheels-") as tmp:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as f:
            f.write(reqs.text())
        say(f"downloading {len(reqs.lines)} requirements and their dependencies here (pip)")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-"
                               "check", "--only-binary=:all:", "-q", "-d", tmp, "-r", req],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"pip download failed here:\n{done.stderr.strip()[-2000:]}")
        files = sorted(n for n in os.listdir(tmp) if n.endswith(".whl"))
        blobs = {}
        for name in files:
            with open(os.path.join(tmp, name), "rb") as f:
                data = f.read()
            blobs[name] = (hashlib.sha256(data).hexdigest(), data)
        store = posixpath.join(backend.root, "blobs")
        present = transport.existing({posixpath.join(store, sha) for sha, _ in blobs.values()})
        sent = 0
        for sha, data in blobs.values():
            path = posixpath.join(store, sha)
            if path not in present:
                transport.put_blob(Blob([memoryview(data)], len(data), sha256=sha), path)
                sent += 1
        transport.makedirs(wheels)
        links = [x for name, (sha, _) in blobs.items()
                 for x in (posixpath.join(store, sha), posixpath.join(wheels, name))]
        transport.shell('while [ $# -gt 0 ]; do ln -sf "$1" "$2"; shift 2; done', *links)
        say(f"wheels: {len(files)} ({sent} sent, {len(files) - sent} already there)")
        return sent


def _follow(transport: Any, log: str, marker: str, failed: str, say: Callable[[str], None],
            timeout: float, poll: float) -> None:
    offset = 0
    deadline = time.monotonic() + timeout
    while True:
        done = transport.existing([marker, failed])
        try:
            chunk = transport.read_from(log, offset)
        except OSError:
            chunk = b""
        offset += len(chunk)
        for line in chunk.decode(errors="replace").splitlines():
            if line.strip():
                say(f"  {line.rstrip()[:200]}")
        if marker in done:
            return
        if failed in done:
            tail = transport.tail(log, 30)
            raise ClusterError(f"the environment build failed on {transport.where}; its log "
                               f"({log}) ends with:\n{tail}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the environment build did not finish in {timeout:.0f} s; it "
                               f"goes on there (log: {log})")
        time.sleep(poll)


def list_envs(backend: Any) -> list[dict[str, Any]]:
    """The environments under the profile's work root: digest, state, requirements, in use."""
    transport = getattr(backend.transport, "inner", backend.transport)
    root = envs_root(backend)
    done = transport.shell('cd "$1" 2>/dev/null || exit 0\nfor d in */; do [ -d "$d" ] && '
                           'echo "${d%/}"; done', root, check=False)
    names = [n for n in done.stdout.split() if n and n != "*"]
    current = (active(backend.profile) or {}).get("digest")
    out = []
    for name in sorted(names):
        d = posixpath.join(root, name)
        present = transport.existing([posixpath.join(d, MARKER), posixpath.join(d, FAILED)])
        state = ("ready" if posixpath.join(d, MARKER) in present else
                 "failed" if posixpath.join(d, FAILED) in present else "building")
        try:
            reqs = transport.read(posixpath.join(d, "requirements.txt")).decode().split()
        except OSError:
            reqs = []
        out.append({"digest": name, "dir": d, "state": state, "requirements": reqs,
                    "active": name == current})
    return out


def prune(backend: Any) -> list[str]:
    """Remove the environments of the profile's work root that no profile uses (and that are
    not being built); their directories."""
    transport = getattr(backend.transport, "inner", backend.transport)
    in_use = {e.get("dir") for e in _read_active().values() if isinstance(e, dict)}
    removed = []
    for env in list_envs(backend):
        if env["dir"] not in in_use and env["state"] != "building":
            transport.remove_tree(env["dir"])
            removed.append(env["dir"])
    return removed


def forget(profile: Any) -> None:
    """The profile's jobs use its own interpreter again."""
    _set_active(profile, None)


def format_envs(envs: list[dict[str, Any]], where: str) -> str:
    """``%cluster env list`` text."""
    if not envs:
        return f"no environments on {where}"
    lines = [f"{'':1} {'HASH':<16} {'STATE':<8} REQUIREMENTS"]
    for e in envs:
        reqs = ", ".join(e["requirements"])
        lines.append(f"{'*' if e['active'] else ' '} {e['digest']:<16} {e['state']:<8} "
                     f"{reqs[:120]}")
    return "\n".join(lines) + "\n(* in use by this profile)"


#: ``%cluster env ACTION PROFILE [options]``
ACTIONS = ("sync", "list", "prune", "off")


def command(backend: Any, action: str, packages: list[str] | None = None, whole: bool = False,
            say: Callable[[str], None] = print) -> Any:
    """One ``env`` action on ``backend``'s profile (shared by the magic and the CLI)."""
    if action == "sync":
        backend.prepare()
        reqs = kernel_requirements(packages, envguard.needed_by_profile(backend.name), whole)
        entry = sync(backend, reqs, say)
        say(f"{'built' if entry['built'] else 'already there:'} {entry['dir']} "
            f"({entry['seconds']:.1f} s); jobs on {backend.name} now run with "
            f"{entry['python']}")
        return entry
    if action == "list":
        say(format_envs(list_envs(backend), backend.transport.where))
        return None
    if action == "prune":
        removed = prune(backend)
        say(f"removed {len(removed)} environment{'s' if len(removed) != 1 else ''}"
            + "".join(f"\n  {d}" for d in removed))
        return removed
    if action == "off":
        forget(backend.profile)
        say(f"jobs on {backend.name} run with {backend.profile.interpreter} again")
        return None
    raise ClusterError(f"unknown env action {action!r}; valid: {', '.join(ACTIONS)}")


def health(backend: Any) -> tuple[str, dict[str, Any]]:
    """For the health check: the version table of the jobs' interpreter against this Python
    (the packages the guard found for the profile and the version-bound ones installed here),
    and whether the synced environment in use is current. ``(one line, details)``."""
    transport = getattr(backend.transport, "inner", backend.transport)
    interp = backend.interpreter
    info = envprobe.interpreter_info(transport, backend.profile, interp, refresh=True)
    mods = envguard.needed_by_profile(backend.name) | {
        m for m, dists in envguard._module_dists().items()
        if envprobe.normalize(dists[0]) in envguard.VERSION_BOUND and "." not in m
        and not m.startswith("_")}
    kernel = envguard.kernel_side(mods)
    missing = {m for m in kernel if not info.has_module(m)}
    verdict = envguard.compare(envguard._python(), envguard._dist_version("dill"), True, kernel,
                               {}, missing, info)
    rows = [{"package": r.package, "kernel": r.kernel, "cluster": r.cluster, "why": r.why,
             "refuse": r.refuse} for r in verdict.rows]
    entry = active(backend.profile)
    synced: dict[str, Any] = {"active": bool(entry)}
    if entry:
        want = kernel_requirements(modules=envguard.needed_by_profile(backend.name))
        current = set(want.lines) <= set(entry["requirements"]) or \
            want.digest == entry["digest"]
        synced.update(digest=entry["digest"], dir=entry["dir"], current=current)
    line = (f"{info.executable}: Python {info.python}, "
            + (f"{len(verdict.rows)} version difference(s), {len(verdict.refused)} refusing"
               if verdict.rows else "versions match")
            + (f"; synced environment {entry['digest']} "
               + ("current" if synced.get("current") else "out of date (env sync)")
               if entry else ""))
    return line, {"rows": rows, "table": envguard.table(verdict.rows) if verdict.rows else "",
                  "synced": synced, "executable": info.executable}
