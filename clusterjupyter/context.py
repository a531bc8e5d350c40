"""The kernel's settings that travel with every job, as small differences.

:func:`collect` runs in the kernel before each submission. It reads only what is cheap and never
imports a library the kernel has not imported itself: matplotlib's rcParams that differ from the
defaults (the active style included) and its backend, the inline backend's figure formats and
settings, pandas display options and numpy print options that differ from the defaults, the
warnings filters, the kernel's own ``sys.path`` entries and the environment variables changed
since the kernel started. The result is a JSON document of a few KB inside the signed manifest.

:func:`apply` runs in the job before the cell. Library settings are applied when the library is
imported (by the inputs or by the cell), so a job that never plots never imports matplotlib.
Standard library only: the runner imports this module.
"""

from __future__ import annotations

import base64
import os
import sys
import warnings
from typing import Any, Callable, cast

#: the backend that shows figures as the kernel's inline backend does
JOB_BACKEND = "module://clusterjupyter._mpl_backend"
INLINE_BACKENDS = ("inline", "module://matplotlib_inline.backend_inline",
                   "module://ipykernel.pylab.backend_inline")
#: backends that only write files: a job uses the same one (nothing is displayed)
FILE_BACKENDS = ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template")
#: rc keys that belong to the process, not to how figures look
_RC_SKIP = frozenset({"backend", "backend_fallback", "interactive", "webagg.port",
                      "webagg.address", "webagg.open_in_browser", "webagg.port_retries",
                      "tk.window_focus", "savefig.directory"})
_ENV_SKIP = ("CLUSTERJUPYTER_", "MPLBACKEND", "JPY_", "PYDEVD_", "_")
_NUMPY_DEFAULTS = {"edgeitems": 3, "threshold": 1000, "floatmode": "maxprec", "precision": 8,
                   "suppress": False, "linewidth": 75, "nanstr": "nan", "infstr": "inf",
                   "sign": "-", "formatter": None, "legacy": False, "override_repr": None}
_INLINE_DEFAULTS = {"figure_formats": ["png"], "print_figure_kwargs": {"bbox_inches": "tight"},
                    "close_figures": True}

_inline: dict[str, Any] = dict(_INLINE_DEFAULTS)


# -- values --------------------------------------------------------------------------------

def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _encode(value: Any) -> Any:
    """JSON for plain values (tuples marked), a pickle otherwise (the manifest is signed)."""
    if isinstance(value, tuple) and _plain(value):
        return {"tuple": list(value)}
    if _plain(value) and not isinstance(value, dict):
        return value
    from . import serialize

    return {"pickle": base64.b64encode(serialize.dumps(value)).decode("ascii")}


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "tuple" in value:
        return tuple(value["tuple"])
    if isinstance(value, dict) and "pickle" in value:
        from . import serialize

        return serialize.loads(base64.b64decode(value["pickle"]))
    return value


# -- the kernel side -------------------------------------------------------------------------

def _initial_environ() -> dict[str, str]:
    """The environment this process started with (Linux: /proc; else the one at import)."""
    try:
        with open(f"/proc/{os.getpid()}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return _STARTED_ENV
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[os.fsdecode(key)] = os.fsdecode(value)
    return out


_STARTED_ENV = dict(os.environ)


def _env_changes() -> dict[str, Any]:
    start = _initial_environ()
    now = os.environ

    def travels(k: str) -> bool:
        return not k.startswith(_ENV_SKIP)

    changed = {k: v for k, v in now.items() if start.get(k) != v and travels(k)}
    removed = [k for k in start if k not in now and travels(k)]
    return {"set": changed, "unset": removed} if changed or removed else {}


def _standard_path(entry: str) -> bool:
    if not entry or "site-packages" in entry or "dist-packages" in entry:
        return True
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return any(entry == p or entry.startswith(p.rstrip("/") + "/") for p in prefixes)


def _sys_path() -> list[str]:
    return [os.path.abspath(p) for p in sys.path if isinstance(p, str) and not _standard_path(p)]


def _warning_filters() -> list[list[Any]]:
    out = []
    for action, message, category, module, lineno in cast("list[Any]", warnings.filters):
        out.append([action, getattr(message, "pattern", message) or "",
                    f"{category.__module__}:{category.__qualname__}",
                    getattr(module, "pattern", module) or "", lineno])
    return out


def _matplotlib() -> dict[str, Any]:
    mpl = sys.modules.get("matplotlib")
    if mpl is None or not hasattr(mpl, "rcParams"):
        return {}
    rc = mpl.rcParams
    defaults = mpl.rcParamsDefault
    diff = {}
    for key, value in dict.items(rc):
        if key in _RC_SKIP:
            continue
        try:
            same = dict.get(defaults, key) == value
        except Exception:
            same = False
        if not same:
            diff[key] = _encode(value)
    backend = None
    getter = getattr(rc, "_get_backend_or_none", None)
    if callable(getter):
        backend = getter()
    elif "matplotlib.pyplot" in sys.modules:
        backend = dict.get(rc, "backend")
    return {"rc": diff, "backend": backend}


def _inline_backend() -> dict[str, Any]:
    mod = sys.modules.get("matplotlib_inline.backend_inline")
    cls = getattr(mod, "InlineBackend", None)
    if cls is None or not cls.initialized():
        return {}
    cfg = cls.instance()
    out = {"figure_formats": sorted(cfg.figure_formats),
           "print_figure_kwargs": {k: _encode(v) for k, v in cfg.print_figure_kwargs.items()},
           "close_figures": bool(cfg.close_figures)}
    return {k: v for k, v in out.items() if v != _INLINE_DEFAULTS[k]}


def _pandas() -> dict[str, Any]:
    if "pandas" not in sys.modules:
        return {}
    try:
        from pandas._config import config
    except ImportError:
        return {}
    diff = {}
    for key, opt in config._registered_options.items():
        node: Any = config._global_config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not opt.defval and node != opt.defval and not isinstance(node, dict):
            diff[key] = _encode(node)
    return diff


def _numpy() -> dict[str, Any]:
    np = sys.modules.get("numpy")
    if np is None or not hasattr(np, "get_printoptions"):
        return {}
    opts = np.get_printoptions()
    if opts.get("legacy") == sys.maxsize:
        opts["legacy"] = False
    return {k: _encode(v) for k, v in opts.items()
            if k in _NUMPY_DEFAULTS and v != _NUMPY_DEFAULTS[k]}


def collect() -> dict[str, Any]:
    """The kernel's settings, as differences from the defaults (small, JSON)."""
    doc: dict[str, Any] = {
        "env": _env_changes(),
        "sys_path": _sys_path(),
        "warnings": _warning_filters(),
        "matplotlib": _matplotlib(),
        "inline": _inline_backend(),
        "pandas": _pandas(),
        "numpy": _numpy(),
        "mplbackend": os.environ.get("MPLBACKEND", ""),
    }
    return {k: v for k, v in doc.items() if v}


# -- the job side --------------------------------------------------------------------------

def inline_settings() -> dict[str, Any]:
    """How the job shows figures (the kernel's inline backend settings)."""
    return _inline


def configure_inline(name: str, value: Any) -> None:
    """``%config InlineBackend.NAME = value`` inside a job."""
    if name == "figure_format":
        name, value = "figure_formats", [value]
    if name == "figure_formats":
        value = [value] if isinstance(value, str) else sorted(value)
    elif name not in _INLINE_DEFAULTS:
        return
    _inline[name] = value


def job_backend(doc: dict[str, Any]) -> str:
    """The matplotlib backend a job uses: the kernel's if it only writes files, else ours."""
    chosen = (doc.get("matplotlib") or {}).get("backend") or doc.get("mplbackend") or ""
    if chosen.lower() in FILE_BACKENDS:
        return chosen.lower()
    return JOB_BACKEND


class _AfterImport:
    """A meta path finder that runs a function once a module has been imported."""

    def __init__(self, hooks: dict[str, Callable[[Any], None]]):
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        hook = self.hooks.pop(name, None)
        if hook is None:
            return None
        if not self.hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original = getattr(loader, "exec_module", None)
        if original is None:
            return spec

        def exec_module(module: Any) -> None:
            original(module)
            _guarded(name, hook, module)

        loader.exec_module = exec_module  # type: ignore[method-assign,union-attr]
        return spec


def _guarded(what: str, hook: Callable[[Any], None], module: Any) -> None:
    try:
        hook(module)
    except Exception as e:  # a setting that does not apply must not stop the cell
        print(f"clusterjupyter: could not apply the kernel's {what} settings: "
              f"{type(e).__name__}: {e}", file=sys.stderr)


def _when_imported(hooks: dict[str, Callable[[Any], None]]) -> None:
    later = {}
    for name, hook in hooks.items():
        if name in sys.modules:
            _guarded(name, hook, sys.modules[name])
        else:
            later[name] = hook
    if later:
        sys.meta_path.insert(0, _AfterImport(later))


def _apply_warnings(filters: list[list[Any]]) -> None:
    """The kernel's filters, in order. A filter whose category lives in a module the job has
    not imported is added when that module is imported (never imported for it)."""
    import re

    def entry(item: list[Any], cls: type) -> tuple:
        action, message, _, module, lineno = item
        return (action, re.compile(message, re.I) if message else None, cls,
                re.compile(module) if module else None, lineno)

    def resolve(category: str) -> type | None:
        modname, _, qualname = category.partition(":")
        obj: Any = sys.modules.get(modname)
        for part in qualname.split(".") if obj is not None else ():
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, type) else None

    rebuilt = []
    pending: dict[str, list[tuple[int, list[Any]]]] = {}
    for index, item in enumerate(filters):
        cls = resolve(item[2])
        if cls is not None:
            rebuilt.append(entry(item, cls))
            continue
        pending.setdefault(item[2].partition(":")[0], []).append((index, item))

    def add(items: list[tuple[int, list[Any]]]) -> Callable[[Any], None]:
        def hook(module: Any) -> None:
            for index, item in items:
                cls = resolve(item[2])
                if cls is not None:
                    cast("list[Any]", warnings.filters).insert(
                        min(index, len(warnings.filters)), entry(item, cls))
            warnings._filters_mutated()  # type: ignore[attr-defined]
        return hook

    later = {modname: add(items) for modname, items in pending.items()}
    cast("list[Any]", warnings.filters)[:] = rebuilt
    warnings._filters_mutated()  # type: ignore[attr-defined]
    if later:
        _when_imported(later)


def _library_hooks(doc: dict[str, Any]) -> dict[str, Callable[[Any], None]]:
    """Functions that apply the kernel's matplotlib, pandas and numpy settings to each library
    once it is imported."""
    hooks: dict[str, Callable[[Any], None]] = {}
    rc = (doc.get("matplotlib") or {}).get("rc")
    if rc:
        def matplotlib(mpl: Any) -> None:
            for key, value in rc.items():
                try:
                    mpl.rcParams[key] = _decode(value)
                except Exception:
                    pass  # a key this matplotlib version does not know
        hooks["matplotlib"] = matplotlib
    if doc.get("pandas"):
        def pandas(pd: Any) -> None:
            for key, value in doc["pandas"].items():
                try:
                    pd.set_option(key, _decode(value))
                except Exception:
                    pass
        hooks["pandas"] = pandas
    if doc.get("numpy"):
        def numpy(np: Any) -> None:
            np.set_printoptions(**{k: _decode(v) for k, v in doc["numpy"].items()})
        hooks["numpy"] = numpy
    return hooks


def _apply_env_and_path(doc: dict[str, Any]) -> None:
    """The environment variables a settings document sets and unsets, and its ``sys.path``
    entries appended (existing folders not there yet)."""
    env = doc.get("env") or {}
    for key in env.get("unset", []):
        os.environ.pop(key, None)
    os.environ.update(env.get("set", {}))
    sys.path.extend(p for p in doc.get("sys_path", []) if p not in sys.path and os.path.isdir(p))


def apply(doc: dict[str, Any]) -> None:
    """Make this job's process look like the kernel (before the cell runs)."""
    # the kernel's own sys.path entries come after the job's (its working directory, staged
    # modules)
    _apply_env_and_path(doc)
    if doc.get("warnings"):
        _apply_warnings(doc["warnings"])
    os.environ["MPLBACKEND"] = job_backend(doc)
    for key, value in (doc.get("inline") or {}).items():
        if key == "print_figure_kwargs":
            value = {k: _decode(v) for k, v in value.items()}
        _inline[key] = value
    hooks = _library_hooks(doc)
    if hooks:
        _when_imported(hooks)


# -- settings the cell changed, back to the kernel -------------------------------------------

def snapshot() -> dict[str, Any]:
    """The job's settings just before the cell runs (to tell what the cell changed)."""
    return {"settings": collect(), "env": dict(os.environ), "sys_path": list(sys.path)}


def changes(before: dict[str, Any]) -> dict[str, Any]:
    """What the cell changed in the settings that travel: the kernel applies it afterwards,
    so it is left as the same cell would have left it."""
    now = collect()
    was = before["settings"]
    out: dict[str, Any] = {}
    mpl_now, mpl_was = now.get("matplotlib") or {}, was.get("matplotlib") or {}
    rc_now, rc_was = mpl_now.get("rc") or {}, mpl_was.get("rc") or {}
    rc = {k: rc_now.get(k) for k in {*rc_now, *rc_was} if rc_now.get(k) != rc_was.get(k)}
    backend = mpl_now.get("backend")
    if rc or (backend and backend != mpl_was.get("backend") and backend != JOB_BACKEND):
        out["matplotlib"] = {"rc": rc, "backend": None if backend == JOB_BACKEND else backend}
    for lib in ("pandas", "numpy"):
        new, old = now.get(lib) or {}, was.get(lib) or {}
        diff = {k: new.get(k) for k in {*new, *old} if new.get(k) != old.get(k)}
        if diff:
            out[lib] = diff
    added = [f for f in now.get("warnings", []) if f not in was.get("warnings", [])]
    if added:
        out["warnings"] = added
    env_was = before["env"]
    env = {k: v for k, v in os.environ.items() if env_was.get(k) != v}
    gone = [k for k in env_was if k not in os.environ]
    if env or gone:
        out["env"] = {"set": env, "unset": gone}
    paths = [os.path.abspath(p) for p in sys.path if p not in before["sys_path"]
             and isinstance(p, str)]
    if paths:
        out["sys_path"] = paths
    return out


def apply_changes(doc: dict[str, Any]) -> None:
    """In the kernel: take the settings a job's cell changed (``None`` value: back to the
    library's default). A library the kernel has not imported gets them when it is."""
    if not doc:
        return
    _apply_env_and_path(doc)
    if doc.get("warnings"):
        _apply_warnings(doc["warnings"] + _warning_filters())
    hooks: dict[str, Callable[[Any], None]] = {}
    mpl = doc.get("matplotlib") or {}
    if mpl:
        def matplotlib(module: Any) -> None:
            if mpl.get("backend"):
                module.use(mpl["backend"])
            for key, value in (mpl.get("rc") or {}).items():
                module.rcParams[key] = (_decode(value) if value is not None
                                        else module.rcParamsDefault[key])
        hooks["matplotlib"] = matplotlib
    if doc.get("pandas"):
        def pandas(module: Any) -> None:
            for key, value in doc["pandas"].items():
                if value is None:
                    module.reset_option(key)
                else:
                    module.set_option(key, _decode(value))
        hooks["pandas"] = pandas
    if doc.get("numpy"):
        def numpy(module: Any) -> None:
            module.set_printoptions(**{k: _NUMPY_DEFAULTS[k] if v is None else _decode(v)
                                       for k, v in doc["numpy"].items()})
        hooks["numpy"] = numpy
    _when_imported(hooks)
