"""Environment sync: build on the cluster an environment matching the kernel's, once.

The requirements (:mod:`.envreqs`) are the kernel's distributions: by default those providing
the modules the environment guard found in this kernel's cells for the profile (else every
module the kernel has imported, without the kernel's own machinery), plus dill and tblib;
``--all`` takes the whole kernel environment, ``--packages`` names them. Index packages are
pinned to their versions, conda packages mapped to pip requirements where they can be, local
and editable ones built here as wheels and shipped content-addressed (never sent twice). The
environment lives in ``WORKDIR/envs/<hash of the requirements and Python minor version>``,
built (:mod:`.envbuild`) on the login host or as a job, its ``build.log`` kept there; the
marker ``.complete`` is written last. A later sync with the same hash reuses it; a changed
kernel environment gives another hash, hence another environment. The profile's jobs then run
with the environment's interpreter (remembered in the user's data directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
import sys
import time
from typing import Any, Callable

from . import envbuild, envguard, envprobe, envreqs
from . import paths as local_paths
from .errors import ClusterError

ACTIVE_FILE = "synced-envs.json"
MARKER, FAILED, LOG = envbuild.MARKER, envbuild.FAILED, envbuild.LOG
Requirements = envreqs.Requirements
BuildError = envbuild.BuildError


class NoEnvironment(ClusterError):
    """No environment was built for the profile (``env log``)."""


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
    shipped through the blob store; the cluster installs from them only. Local distributions
    (editable, from a directory or file) are shipped as wheels built here either way."""
    if offline is None:
        offline = bool(getattr(backend.profile, "env_offline", False))
    t0 = time.perf_counter()
    profile = backend.profile
    transport = getattr(backend.transport, "inner", backend.transport)
    base = envprobe.interpreter_info(transport, profile)
    d = posixpath.join(envs_root(backend), reqs.digest)
    python = posixpath.join(d, "venv", "bin", "python")
    marker, failed = posixpath.join(d, MARKER), posixpath.join(d, FAILED)
    state = transport.existing([marker, failed, d])
    built = marker not in state
    native = None
    if built:
        if d in state and failed not in state and envbuild.job_of(transport, d) is None:
            gone = envbuild.builder(transport, d)     # a login-host build: does it go on?
            if gone.state == "dead":
                say(f"the build of {reqs.digest} ({gone}) ended without finishing it; "
                    "building it again")
                state.add(failed)
        if failed in state:
            transport.remove_tree(d)
            state = set()
        if d in state:      # being built (by another kernel, or a sync that was interrupted)
            native = envbuild.job_of(transport, d)
        else:
            native = _start(backend, transport, reqs, d, base.executable, offline, say)
        envbuild.follow(backend, transport, d, say, timeout, poll, native)
    entry = {"dir": d, "python": python, "digest": reqs.digest,
             "requirements": _shown(reqs), "python_minor": reqs.python_minor}
    _set_active(profile, entry)
    envprobe.forget(profile, shlex.quote(python))
    return {**entry, "built": built, "seconds": round(time.perf_counter() - t0, 3)}


def _start(backend: Any, transport: Any, reqs: Requirements, d: str, base: str, offline: bool,
           say: Callable[[str], None]) -> str | None:
    """Ship the wheels and requirements into ``d`` and start its build (the job's native id
    when it runs as a job). Whatever stops this before the build started (a wheel that does
    not download, a refused submission, an interrupt) removes ``d``: a later sync would
    otherwise wait for a build that nothing runs."""
    try:
        for line in reqs.plan():
            say(line)
        wheels = ship_wheels(backend, transport, reqs, posixpath.join(d, "wheels"), say, offline)
        transport.write_many({
            posixpath.join(d, "requirements.txt"): (reqs.text(wheels).encode(), 0o600),
            posixpath.join(d, "plan.txt"): ("".join(f"{x}\n" for x in reqs.plan()).encode(),
                                            0o600)})
        how = "a process there" if envbuild.mode(backend.profile) == "login" else "a job"
        say(f"building the environment {reqs.digest} on {transport.where} as {how} (log: "
            f"{posixpath.join(d, LOG)})")
        return envbuild.start(backend, transport, d, base, reqs.python_minor, offline, say)
    except BaseException:
        try:
            transport.remove_tree(d)
        except Exception:       # the connection that failed: the error above says so
            pass
        raise


def _shown(reqs: Requirements) -> list[str]:
    """The requirements as remembered and compared: the pinned lines, then each local
    wheel's name, version and source hash."""
    return sorted(reqs.lines) + [f"{d.name}=={d.version} (local {d.digest[:12]})"
                                 for d in reqs.local]


def ship_wheels(backend: Any, transport: Any, reqs: Requirements, wheels: str,
                say: Callable[[str], None], offline: bool) -> dict[str, str]:
    """Put the wheels the cluster installs from this machine under their content address in
    the blob store (an unchanged one is never sent again) and link them into ``wheels``:
    each local distribution's (built here, :func:`.envreqs.local_wheel`) and, ``offline``,
    every requirement's with its dependencies (``pip download`` here: the cluster must share
    this machine's platform). Returns normalized name -> path there of the local wheels."""
    import subprocess
    import tempfile

    transport.makedirs(posixpath.dirname(wheels))
    local = {dist.name: envreqs.local_wheel(dist, say) for dist in reqs.local}
    files = {os.path.basename(path): path for path in local.values()}
    with tempfile.TemporaryDirectory(prefix="cj-wheels-") as tmp:
        if offline:
            req = os.path.join(tmp, "requirements.txt")
            with open(req, "w") as f:
                f.write(reqs.text())
            say(f"downloading {len(reqs.lines)} requirements and their dependencies here (pip)")
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-"
                                   "version-check", "--only-binary=:all:", "-q", "-d", tmp,
                                   "-r", req, *local.values()], capture_output=True, text=True)
            if done.returncode != 0:
                raise ClusterError(f"pip download failed here:\n{done.stderr.strip()[-2000:]}")
            files.update({n: os.path.join(tmp, n) for n in os.listdir(tmp)
                          if n.endswith(".whl") and n not in files})
        if not files:
            return {}
        sent = _send(backend, transport, files, wheels)
    say(f"wheels: {len(files)} ({sent} sent, {len(files) - sent} already there)")
    return {name: posixpath.join(wheels, os.path.basename(path)) for name, path in local.items()}


def _send(backend: Any, transport: Any, files: dict[str, str], wheels: str) -> int:
    """Each file (name -> local path) into the blob store under its sha256 unless there, and
    linked as ``wheels/NAME``. Returns how many were sent."""
    from .serialize import Blob

    digests = {}
    for name, path in files.items():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests[name] = h.hexdigest()
    store = posixpath.join(backend.root, "blobs")
    present = transport.existing({posixpath.join(store, sha) for sha in digests.values()})
    sent = 0
    for name, sha in digests.items():
        path = posixpath.join(store, sha)
        if path not in present:
            with open(files[name], "rb") as f:
                data = f.read()
            transport.put_blob(Blob([memoryview(data)], len(data), sha256=sha), path)
            present.add(path)
            sent += 1
    transport.makedirs(wheels)
    links = [x for name, sha in digests.items()
             for x in (posixpath.join(store, sha), posixpath.join(wheels, name))]
    transport.shell('while [ $# -gt 0 ]; do ln -sf "$1" "$2"; shift 2; done', *links)
    return sent


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
            text = transport.read(posixpath.join(d, "requirements.txt")).decode()
        except OSError:
            text = ""
        log = posixpath.join(d, LOG)
        tail = [x for x in transport.tail(log, 8).splitlines() if x.strip()]
        out.append({"digest": name, "dir": d, "state": state, "active": name == current,
                    "requirements": [_short(x) for x in text.splitlines() if x.strip()],
                    "log": log, "log_tail": tail[-5:], "job": envbuild.job_of(transport, d)})
    return out


def _short(line: str) -> str:
    """``name @ file:///…/name-1.0-py3-none-any.whl`` -> ``name (local wheel …whl)``."""
    name, sep, url = line.partition(" @ file://")
    return f"{name} (local wheel {posixpath.basename(url)})" if sep else line.strip()


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
        built = f"built as job {e['job']}; " if e.get("job") else ""
        lines.append(f"{'':27}{built}log: {e['log']}")
        shown = e["log_tail"] if e["state"] == "failed" else e["log_tail"][-1:]
        lines += [f"{'':29}{x[:150]}" for x in shown]
    return "\n".join(lines) + "\n(* in use by this profile)"


def build_log(backend: Any) -> tuple[str, str]:
    """``(path, text)`` of the build log of the environment the profile uses, else of the
    latest build under its work root (a failed one, say)."""
    transport = getattr(backend.transport, "inner", backend.transport)
    entry = active(backend.profile)
    if entry:
        path = posixpath.join(entry["dir"], LOG)
    else:
        done = transport.shell('ls -t "$1"/*/build.log 2>/dev/null | head -n 1',
                               envs_root(backend), check=False)
        path = done.stdout.strip()
        if not path:
            raise NoEnvironment(f"no environment was built for profile {backend.name!r} on "
                               f"{transport.where}; `%cluster env sync {backend.name}` (or "
                                f"`clusterjupyter env sync {backend.name} --packages …`) "
                                "builds one")
    return path, transport.tail(path, None)


#: ``%cluster env ACTION PROFILE [options]``
ACTIONS = ("sync", "list", "prune", "off", "log")


def command(backend: Any, action: str, packages: list[str] | None = None, whole: bool = False,
            say: Callable[[str], None] = print) -> Any:
    """One ``env`` action on ``backend``'s profile (shared by the magic and the CLI)."""
    if action == "sync":
        backend.prepare()
        reqs = envreqs.kernel_requirements(packages, envguard.needed_by_profile(backend.name),
                                           whole)
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
    if action == "log":
        path, text = build_log(backend)
        say(f"{path}:\n{text.rstrip()}")
        return path
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
        want = envreqs.kernel_requirements(modules=envguard.needed_by_profile(backend.name))
        current = set(_shown(want)) <= set(entry["requirements"]) or \
            want.digest == entry["digest"]
        log = posixpath.join(entry["dir"], LOG)
        tail = [x for x in transport.tail(log, 8).splitlines() if x.strip()]
        synced.update(digest=entry["digest"], dir=entry["dir"], current=current, log=log,
                      log_tail=tail[-5:], job=envbuild.job_of(transport, entry["dir"]))
    line = (f"{info.executable}: Python {info.python}, "
            + (f"{len(verdict.rows)} version difference(s), {len(verdict.refused)} refusing"
               if verdict.rows else "versions match")
            + (f"; synced environment {entry['digest']} "
               + ("current" if synced.get("current") else "out of date (env sync)")
               + (f", built as job {synced['job']}" if synced.get("job") else "")
               + f" (build log: {synced['log']})" if entry else ""))
    return line, {"rows": rows, "table": envguard.table(verdict.rows) if verdict.rows else "",
                  "synced": synced, "executable": info.executable}
