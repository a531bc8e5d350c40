"""Cluster profiles: named configurations in a TOML file, plus the built-in ``local``.

The file (``profiles.toml`` in the user's config directory, see :mod:`clusterjupyter.paths`)::

    default = "hpc"                  # optional: the profile %%cluster uses without a name

    [profiles.hpc]
    scheduler = "slurm"              # local | slurm | sge | pbs | kubernetes
    host = "hpc-login"               # SSH host or ~/.ssh/config alias; omit to run here
    user = "alice"                   # optional (default: ~/.ssh/config or your login)
    port = 22                        # optional
    identity_file = "~/.ssh/id_ed25519"   # optional (ssh-agent and ~/.ssh/config are used too)
    workdir = "~/.clusterjupyter"    # where job directories live on the cluster
    python = "/opt/conda/envs/sci/bin/python"
    prelude = ["module load python/3.11"] # shell lines run before the job's python
    env = {OMP_NUM_THREADS = "4"}
    shared_fs = false                # the job's hosts see this machine's files (default: true
                                     # without a host, except Kubernetes)
    path_map = {"/Users/alice/proj" = "/home/alice/proj"}  # this directory is that one there
    stage = ["data/"]                # always staged when the files must travel
    stage_limit = "1G"               # most bytes staged per job (default 1G)
    stage_max_files = 1000           # most files staged (and sent back) per job
    return_limit = "256M"            # most bytes of files sent back per job (default 256M)
    faults = {rate = 0.05, seed = 1} # inject real clusters' faults (see clusterjupyter.faults)
    environment = "check"            # versions checked before each job; "sync": build a
                                     # matching environment there first; "off"
    env_offline = false              # env sync: wheels downloaded here, shipped there
    env_build = "login"              # env sync builds on the login host, or "job"
    [profiles.hpc.resources]         # defaults for --time, --mem, --cpus, ...
    time = "1h"
    partition = "debug"

Passwords and passphrases are never stored: use ssh-agent, a key file, or answer the prompt.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ProfileError
from .paths import local_work_root, profiles_path
from .resources import Resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCAL = "local"
_FORBIDDEN = {"password", "passphrase", "secret", "token"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Profile:
    """One named cluster configuration."""

    name: str
    scheduler: str = "local"
    host: str | None = None
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None          # extra known_hosts file to trust
    accept_unknown_host: bool = False       # add an unknown host key instead of refusing
    proxy_jump: str | None = None
    workdir: str | None = None
    python: str | None = None
    prelude: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    ship_runner: bool = True                # upload the runner so the cluster needs only dill
    description: str = ""
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    shared_fs: bool | None = None           # None: true without a host, except Kubernetes
    path_map: dict[str, str] = field(default_factory=dict)
    stage: list[str] = field(default_factory=list)
    stage_limit: str = ""
    stage_max_files: int | None = None
    return_limit: str = ""
    faults: dict[str, Any] = field(default_factory=dict)   # fault injection (see faults.py)
    environment: str = ""                   # check (default) | sync | off (see envguard.py)
    env_offline: bool = False               # env sync: wheels downloaded here, shipped there
    env_build: str = ""                     # env sync builds on: login (default) | job

    @property
    def remote(self) -> bool:
        return bool(self.host)

    @property
    def default_resources(self) -> Resources:
        return Resources.parse(self.resources, self.name)

    @property
    def work_root(self) -> str:
        if self.workdir:
            return self.workdir
        return "~/.clusterjupyter" if self.remote else local_work_root()

    @property
    def interpreter(self) -> str:
        if self.python:
            return self.python
        return "python3" if self.remote else _quote(sys.executable)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, [], {}, "")
                or k in ("name", "scheduler")}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "Profile":
        """Validate ``data``; raise ProfileError naming the profile and the field at fault."""
        if not _NAME_RE.match(name):
            raise ProfileError("names use letters, digits, '_', '.', '-' (up to 64)", name,
                               "name")
        valid = [f for f in cls.field_names() if f != "name"]
        for key in data:
            if key.lower() in _FORBIDDEN:
                raise ProfileError("passwords and passphrases are never stored; use ssh-agent, "
                                   "a key file, or the prompt", name, key)
            if key not in valid:
                raise ProfileError(f"unknown field; valid fields: {', '.join(valid)}", name, key)
        kw: dict[str, Any] = {"name": name}
        types = {f.name: f.type for f in fields(cls)}
        for key, value in data.items():
            kw[key] = _check_type(name, key, value, str(types[key]))
        from .schedulers import available

        kw["scheduler"] = str(kw.get("scheduler", "local")).lower()
        if kw["scheduler"] not in available():
            installed = ", ".join(sorted(available())) or "none (is clusterjupyter installed?)"
            raise ProfileError(f"unknown scheduler {kw['scheduler']!r}; installed: {installed}",
                               name, "scheduler")
        if isinstance(kw.get("prelude"), str):
            kw["prelude"] = [kw["prelude"]]
        port = kw.get("port")
        if port is not None and not (0 < port < 65536):
            raise ProfileError(f"port {port} is out of range", name, "port")
        for key in kw.get("env", {}):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ProfileError(f"invalid environment variable name {key!r}", name, "env")
        kw["env"] = {k: str(v) for k, v in kw.get("env", {}).items()}
        _check_staging(name, kw)
        _check_env_modes(name, kw)
        if kw.get("faults"):
            from .faults import FaultPlan

            FaultPlan.parse(kw["faults"], name)
        if not kw.get("host"):
            stray = [k for k in REMOTE_ONLY if kw.get(k) not in (None, False, "")]
            if stray:
                raise ProfileError(f"{', '.join(stray)} only apply to a remote host, and there "
                                   "is no 'host': add host = \"...\" (or remove them to run "
                                   "on this machine)", name, stray[0])
        profile = cls(**kw)
        Resources.parse(profile.resources, profile.name)  # names a bad resource field
        return profile


def _check_env_modes(name: str, kw: dict[str, Any]) -> None:
    if kw.get("environment", "check") not in ENVIRONMENT_MODES:
        raise ProfileError(f"unknown mode {kw['environment']!r}; valid: "
                           f"{', '.join(ENVIRONMENT_MODES)}", name, "environment")
    if kw.get("env_build", "login") not in ENV_BUILD_MODES:
        raise ProfileError(f"unknown place {kw['env_build']!r}; valid: "
                           f"{', '.join(ENV_BUILD_MODES)}", name, "env_build")


def _check_staging(name: str, kw: dict[str, Any]) -> None:
    from .staging import parse_size

    for key in ("stage_limit", "return_limit"):
        if kw.get(key):
            try:
                parse_size(kw[key])
            except ValueError as e:
                raise ProfileError(str(e), name, key) from None
    if kw.get("stage_max_files") is not None and kw["stage_max_files"] < 1:
        raise ProfileError("must be at least 1", name, "stage_max_files")
    for local, remote in kw.get("path_map", {}).items():
        if not isinstance(remote, str) or not os.path.isabs(os.path.expanduser(local)) \
                or not remote.startswith(("/", "~")):
            raise ProfileError(f"entries map an absolute local directory to its path on the "
                               f"cluster, e.g. {{\"/Users/me/proj\" = \"/home/me/proj\"}}; "
                               f"got {local!r} = {remote!r}", name, "path_map")


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)


def _check_type(profile: str, key: str, value: Any, typ: str) -> Any:
    if "bool" in typ:
        if not isinstance(value, bool):
            raise ProfileError(f"must be true or false, not {value!r}", profile, key)
        return value
    if "int" in typ:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                return int(str(value))
            except ValueError:
                raise ProfileError(f"must be a whole number, not {value!r}", profile, key) from None
        return value
    if typ.startswith("list"):
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError("must be a list of strings", profile, key)
        return value
    if typ.startswith("dict"):
        if not isinstance(value, dict):
            raise ProfileError("must be a table (key = value pairs)", profile, key)
        return value
    if not isinstance(value, str):
        raise ProfileError(f"must be a string, not {value!r}", profile, key)
    return value


def builtin_local() -> Profile:
    return Profile(name=LOCAL, scheduler="local",
                   description="this machine (a separate process per job)")


#: ``environment``: check versions before each job (default), build a matching environment on
#: the cluster before the first job and use it (sync), or neither (off)
ENVIRONMENT_MODES = ("check", "sync", "off")
#: ``env_build``: where env sync builds: a process on the login host, or a scheduler job
ENV_BUILD_MODES = ("login", "job")
#: what the top level of the profiles file may hold
TOP_LEVEL = ("default", "profiles")
#: fields that only mean something for a remote host
REMOTE_ONLY = ("user", "port", "identity_file", "known_hosts", "accept_unknown_host",
               "proxy_jump")


def read_file(path: str | None = None) -> dict[str, Any]:
    """The profiles file as a table, checked at the top level (``default``, ``profiles``)."""
    path = path or profiles_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path} is not UTF-8 text ({e}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path} is not valid TOML: {e}") from None
    for key in data:
        if key not in TOP_LEVEL:
            raise ProfileError(f"unknown top-level key {key!r} in {path}; valid keys: "
                               f"{', '.join(TOP_LEVEL)} (a profile goes under [profiles.NAME])")
    if "default" in data and not isinstance(data["default"], str):
        raise ProfileError(f"'default' in {path} must be a profile name in quotes, not "
                           f"{data['default']!r}")
    return data


def load_profiles(path: str | None = None) -> dict[str, Profile]:
    """All profiles: the built-in ``local`` (unless the file redefines it), then the file's."""
    data = read_file(path)
    out = {LOCAL: builtin_local()}
    section = data.get("profiles", {})
    if not isinstance(section, dict):
        raise ProfileError(f"'profiles' in {path or profiles_path()} must be a table")
    for name, body in section.items():
        if not isinstance(body, dict):
            raise ProfileError("must be a table", name)
        out[name] = Profile.from_dict(name, body)
    return out


def default_profile_name(path: str | None = None) -> str:
    return str(read_file(path).get("default", LOCAL))


def get_profile(name: str | None, path: str | None = None) -> Profile:
    """The profile called ``name`` (the default profile if None)."""
    profiles = load_profiles(path)
    name = name or default_profile_name(path)
    if name not in profiles:
        file = path or profiles_path()
        where = (f"defined in {file}" if os.path.exists(file)
                 else f"{file} does not exist yet")
        raise ProfileError(f"unknown profile {name!r}; profiles: {', '.join(profiles)} "
                           f"({where}). Add one in the panel's Profiles tab (%cluster panel), "
                           f"or as a [profiles.{name}] table in that file")
    return profiles[name]


def _write(data: dict[str, Any], path: str | None) -> None:
    import tomli_w

    from .jobdir import write_atomic

    path = path or profiles_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, tomli_w.dumps(data).encode(), 0o600)


def save_profile(profile: Profile, path: str | None = None) -> None:
    """Add or replace ``profile`` in the file (validated first; other entries are kept)."""
    body = {k: v for k, v in profile.to_dict().items() if k != "name"}
    Profile.from_dict(profile.name, body)
    data = read_file(path)
    data.setdefault("profiles", {})[profile.name] = body
    _write(data, path)


def delete_profile(name: str, path: str | None = None) -> None:
    data = read_file(path)
    if name not in data.get("profiles", {}):
        raise ProfileError(f"no profile {name!r} in {path or profiles_path()}")
    del data["profiles"][name]
    if data.get("default") == name:
        del data["default"]
    _write(data, path)


def set_default(name: str, path: str | None = None) -> None:
    get_profile(name, path)
    data = read_file(path)
    data["default"] = name
    _write(data, path)
