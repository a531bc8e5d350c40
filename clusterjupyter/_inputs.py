"""A job's inputs, where the job runs: the manifest verified against the per-user secret, then
every input blob verified (MAC bound to the job, sha256, signed size) before it is unpickled into
the cell's module.

Nothing is allocated or unpickled before its blob verifies; a blob that does not is an
:class:`~.jobdir.IntegrityError`. Standard library only (imported by :mod:`.runner`).
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from typing import Any

from . import bundle, serialize
from .jobdir import SECRET_ENV, IntegrityError, JobPaths, blob_mac, check, load_secret, \
    verify_document


def secret_path(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """Where the per-user secret is on this machine: ``$CLUSTERJUPYTER_SECRET_FILE``, else
    the configuration directory's ``clusterjupyter/secret``."""
    path = environ.get(SECRET_ENV)
    if not path:
        base = environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        path = os.path.join(base, "clusterjupyter", "secret")
    return path


def load_manifest(paths: JobPaths) -> tuple[bytes, dict[str, Any]]:
    """The secret and the job's verified manifest (signed by the kernel, for this job only)."""
    key = load_secret(secret_path())
    with open(paths.manifest, "rb") as f:
        data = f.read()
    with open(paths.manifest_sig, "rb") as f:
        sig = f.read()
    manifest = verify_document(key, "manifest", data, sig)
    if manifest.get("job_id") != paths.job_id:
        raise IntegrityError("manifest belongs to another job")
    return key, manifest


def import_modules(modules: dict[str, str], ns: dict[str, Any]) -> None:
    """Bind the modules the cell uses by name (``np`` for ``numpy``); one that is missing where
    the job runs is said on stderr, and the cell fails where it uses it, as in the kernel."""
    for name, modname in modules.items():
        try:
            ns[name] = __import__(modname, fromlist=["_"])
        except ImportError as e:
            print(f"clusterjupyter: module {modname!r} (as {name}) is not available where "
                  f"the job runs: {e}", file=sys.stderr)


class _Reader:
    """Reads and verifies the blobs named by the manifest's ``inputs`` entries."""

    def __init__(self, entries: dict[str, Any], key: bytes, paths: JobPaths):
        self.entries, self.key, self.paths = entries, key, paths

    def read(self, name: str) -> tuple[bytes, list]:
        entry = self.entries[name]
        check(blob_mac(self.key, self.paths.job_id, entry["sha256"]), entry["mac"],
              f"input {name!r}")
        with open(self.paths.blob(entry["sha256"]), "rb") as f:
            try:
                return serialize.read_verified(f, entry["sha256"], entry.get("size"))
            except pickle.UnpicklingError as e:
                why = f" ({e})" if str(e) else ""
                raise IntegrityError(f"blob of input {name!r} was altered{why}") from None


def restore_inputs(manifest: dict[str, Any], key: bytes, paths: JobPaths,
                   module: types.ModuleType) -> dict[str, Any]:
    """Every input of the job, verified and unpickled into ``module``'s namespace; returns them
    by name (the objects the cell starts from, to tell later what it rebound or mutated)."""
    entries = manifest.get("inputs", {})
    reader = _Reader(entries, key, paths)
    inputs: dict[str, Any] = {}
    loading: set[str] = set()

    def load(name: str) -> Any:
        if name in inputs:
            return inputs[name]
        if name in loading or name not in entries or name in bundle.GROUPS:
            raise IntegrityError(f"input {name!r} is not part of this job")
        loading.add(name)
        data, buffers = reader.read(name)
        value = serialize._Unpickler(io.BytesIO(data), module, load, buffers).load()
        inputs[name] = module.__dict__[name] = value
        return value

    for name in entries:
        if name not in bundle.GROUPS:
            load(name)
    for group in bundle.GROUPS:
        if group in entries:
            data, buffers = reader.read(group)
            loaded: dict[str, Any] = bundle.load_group(data, buffers, module, load, load)
            for name, value in loaded.items():
                inputs[name] = module.__dict__[name] = value
    return inputs

