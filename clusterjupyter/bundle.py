"""Values pickled together, so that what is shared stays shared.

A job's inputs (and its results) are pickled as one namespace: two names for one object, an
object inside another, a numpy array and a view of it are one object on the other side. Two
groups keep this fast: values the C pickler handles (``__ns__``) and notebook functions and
whatever else needs dill (``__nsd__``).

Some objects do not travel inside a group but as references (persistent ids): large arrays,
which travel as blobs of their own so an unchanged one is not sent again; notebook classes; and,
in a result, the job's inputs themselves, which the kernel resolves to its own objects. An input
the cell mutated travels as its new state, which the kernel writes into its existing object. An
object *inside* an input (a list in a dict, an array in a notebook object) travels back as its
path from the input's name together with its state: the kernel writes the state into its own
object at that path, so that every other container holding it sees the change.

Standard library only (numpy is used only when a value is an array): the runner imports it.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
from typing import Any, BinaryIO, Callable

from . import serialize

#: arrays (numpy, pandas) of at least this many bytes travel as blobs of their own
SEPARATE_MIN = 1 << 20
GROUPS = ("__ns__", "__nsd__")
REF = "ref"
MODULE = "module"
NESTED = "nested"
#: values whose identity does not matter: never sent as references
_ATOMS = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset, range)
_SCALARS = (type(None), bool, int, float, complex, str, bytes, range)
#: most elements looked at when finding the objects inside a job's inputs
WALK_LIMIT = 200_000

Refs = dict[int, tuple]
Path = tuple[tuple[str, Any], ...]


class Root:
    """Marks an object that must be pickled by value even though it is also referenced (an
    input's new state)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def _same(value: Any) -> Any:
    return value


def _view(base: Any, offset: int, shape: tuple, strides: tuple, dtype: Any) -> Any:
    """A numpy view of ``base``, as the view was of its base on the other side."""
    import numpy as np

    return np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)


def refs_for(values: dict[str, Any]) -> Refs:
    """References to these named objects (the first name of each object)."""
    refs: Refs = {}
    for name, value in values.items():
        if not isinstance(value, _ATOMS):
            refs.setdefault(id(value), (REF, name))
    return refs


def module_refs(values: dict[str, Any]) -> Refs:
    """References for values that are a module's own attribute of the same name (what
    ``from pylab import *`` binds): the other side binds its own module's object."""
    refs: Refs = {}
    for name, value in values.items():
        if isinstance(value, _ATOMS) or isinstance(value, types.ModuleType):
            continue
        for modname in {getattr(value, "__module__", None), type(value).__module__}:
            if not isinstance(modname, str) or modname in ("__main__", "builtins"):
                continue
            parts = modname.split(".")
            for i in range(len(parts), 0, -1):
                module = sys.modules.get(".".join(parts[:i]))
                if module is not None and getattr(module, "__dict__", {}).get(name) is value:
                    refs.setdefault(id(value), (MODULE, f"{module.__name__}:{name}"))
                    break
    return refs


def typename(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _notebook_instance(value: Any) -> bool:
    return type(value).__module__ == "__main__" and hasattr(value, "__dict__") \
        and not isinstance(value, (type, types.FunctionType))


def _shared_kind(value: Any) -> bool:
    """A mutable object whose identity matters (others may hold it too)."""
    if isinstance(value, (list, dict, set, bytearray)) or _notebook_instance(value):
        return True
    np = sys.modules.get("numpy")
    if np is not None and type(value) is np.ndarray:
        return True   # a view too: its new elements are written through the kernel's view
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, (pd.DataFrame, pd.Series))


def _plain_key(key: Any) -> bool:
    return isinstance(key, _SCALARS) or (type(key) is tuple and all(map(_plain_key, key)))


def _walk(values: dict[str, Any]) -> Any:
    """Every object in the named values, once, with its first path from a name: lists, tuples
    and dicts (plain keys) and the attributes of notebook-class instances are looked into, at
    most :data:`WALK_LIMIT` elements in all."""
    seen: set[int] = set()
    budget = WALK_LIMIT
    stack: list[tuple[str, Path, Any]] = [(n, (), v) for n, v in reversed(values.items())]
    while stack and budget > 0:
        name, path, value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        yield name, path, value
        if isinstance(value, (list, tuple)):
            items: Any = (("i", i, v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            items = (("k", k, v) for k, v in value.items() if _plain_key(k))
        elif _notebook_instance(value):
            items = (("a", k, v) for k, v in vars(value).items())
        else:
            continue
        children = []
        for kind, key, child in items:
            budget -= 1
            if budget <= 0:
                break
            if not isinstance(child, _SCALARS):
                children.append((name, path + ((kind, key),), child))
        stack.extend(reversed(children))


def nested_refs(values: dict[str, Any]) -> tuple[Refs, list[Any]]:
    """The shared-kind objects inside the named values (not the values themselves), each as
    its first path from a name (:func:`_walk`). Returns the references and the objects looked
    at (keep them alive while the references are used: they are known by ``id``)."""
    refs: Refs = {}
    top = {id(v) for v in values.values()}
    kept: list[Any] = []
    for name, path, value in _walk(values):
        kept.append(value)
        if path and id(value) not in top and _shared_kind(value):
            refs[id(value)] = (NESTED, name, path, typename(value))
    return refs, kept


def follow(root: Any, path: Path) -> Any:
    """The object at ``path`` (from :func:`nested_refs`) inside ``root``."""
    value = root
    for kind, key in path:
        if kind == "i" and isinstance(value, (list, tuple)):
            value = value[key]
        elif kind == "k" and isinstance(value, dict):
            value = value[key]
        elif kind == "a":
            value = vars(value)[key]
        else:
            raise LookupError(f"{kind} {key!r}")
    return value


def separate(value: Any) -> bool:
    """Does this value travel as a blob of its own (a large array, not a view)?"""
    np = sys.modules.get("numpy")
    if np is not None and type(value) is np.ndarray:
        return value.nbytes >= SEPARATE_MIN and not isinstance(value.base, np.ndarray)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
        try:
            size = value.memory_usage(index=True, deep=False)
            return int(getattr(size, "sum", lambda: size)()) >= SEPARATE_MIN
        except Exception:
            return False
    return False


class _Rules:
    """What both picklers do: references, notebook classes by name, numpy views."""

    def __init__(self, class_ref: Any, refs: Refs, arrays: list[Any], root: Any):
        self.class_ref = class_ref
        self.refs = refs
        self.arrays = [(a, *_extent(a)) for a in arrays
                       if a.flags.c_contiguous or a.flags.f_contiguous]
        self.root = root
        self.allow: int | None = None
        self.nested: dict[int, tuple] = {}

    def persistent_id(self, obj: Any) -> Any:
        pid = self.refs.get(id(obj)) if self.refs else None
        if pid is not None:
            if id(obj) == self.allow:
                self.allow = None
            elif pid[0] == NESTED:   # its path, and its state (the object by value)
                if id(obj) not in self.nested:
                    self.nested[id(obj)] = (*pid, Root(obj))
                return self.nested[id(obj)]
            else:
                return pid
        if self.class_ref is not None and isinstance(obj, type) and obj is not self.root:
            name = self.class_ref(obj)
            if name is not None:
                return (serialize._MAIN_CLASS, name)
        return None

    def reduce(self, obj: Any) -> Any:
        if type(obj) is Root:
            self.allow = id(obj.value)
            return (_same, (obj.value,))
        np = sys.modules.get("numpy") if self.arrays else None
        if np is not None and type(obj) is np.ndarray and obj.base is not None:
            return self.view_of(obj)
        return NotImplemented

    def view_of(self, view: Any) -> Any:
        """A view of one of the named arrays travels as a view of it (the largest that holds
        its memory)."""
        low, high = _extent(view)
        best = None
        for array, start, end in self.arrays:
            if array is not view and start <= low and high <= end and \
                    (best is None or end - start > best[2] - best[1]):
                best = (array, start, end)
        if best is None:
            return NotImplemented
        offset = view.__array_interface__["data"][0] - best[1]
        return (_view, (best[0], offset, view.shape, view.strides, view.dtype))


def _extent(array: Any) -> tuple[int, int]:
    """The first and one-past-last byte addresses an array's elements occupy."""
    start = array.__array_interface__["data"][0]
    low = high = start
    for n, stride in zip(array.shape, array.strides, strict=True):
        if n == 0:
            return start, start
        if stride > 0:
            high += (n - 1) * stride
        else:
            low += (n - 1) * stride
    return low, high + array.itemsize


class _CPickler(pickle.Pickler):
    def __init__(self, file: BinaryIO, rules: _Rules, **kw: Any):
        super().__init__(file, protocol=serialize.PROTOCOL, **kw)
        self.rules = rules

    def persistent_id(self, obj: Any) -> Any:
        return self.rules.persistent_id(obj)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and serialize._is_main(obj):
            raise serialize._NeedDill
        if isinstance(obj, types.CodeType):
            raise serialize._NeedDill
        return self.rules.reduce(obj)


def _frame(stream: io.BytesIO, buffers: list[pickle.PickleBuffer], dill: bool) -> serialize.Blob:
    views = [b.raw() for b in buffers]
    data = stream.getbuffer()
    head = serialize._HEAD.pack(serialize.MAGIC, len(views), len(data)) + b"".join(
        struct.pack("<Q", v.nbytes) for v in views)
    parts = [memoryview(head), data, *views]
    return serialize.Blob(parts=parts, size=sum(p.nbytes for p in parts), used_dill=dill)


def _dump(obj: Any, opts: serialize.DumpOptions, refs: Refs, arrays: list[Any],
          dill: bool) -> serialize.Blob:
    rules = _Rules(opts.class_ref, refs, arrays, obj)
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    if not dill:
        _CPickler(stream, rules, buffer_callback=buffers.append).dump(obj)
        return _frame(stream, buffers, False)
    import dill as dill_module

    class DillPickler(dill_module.Pickler):  # type: ignore[misc]
        def persistent_id(self, o: Any) -> Any:
            return rules.persistent_id(o)

        def reducer_override(self, o: Any) -> Any:
            return rules.reduce(o)

    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = opts.main
    try:
        p = DillPickler(stream, protocol=serialize.PROTOCOL, recurse=False, byref=False,
                        buffer_callback=buffers.append)
        p._main = opts.main
        p.dump(obj)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved
    return _frame(stream, buffers, True)


def _why(value: Any, e: BaseException) -> str:
    return f"{type(value).__name__} cannot be pickled ({type(e).__name__}: {e})"


def dump_groups(values: dict[str, Any], opts: serialize.DumpOptions, refs: Refs,
                arrays: list[Any]) -> tuple[dict[str, serialize.Blob], dict[str, str]]:
    """Pickle ``values`` together, in the two groups; views of ``arrays`` travel as views.
    Returns the groups' blobs and the values that could not be pickled (left out, with why)."""
    plain = {n: v for n, v in values.items()
             if not (isinstance(v, (types.FunctionType, type)) and serialize._is_main(v))}
    needs_dill = {n: v for n, v in values.items() if n not in plain}
    problems: dict[str, str] = {}
    blobs: dict[str, serialize.Blob] = {}
    if plain:
        try:
            blobs[GROUPS[0]] = _dump(plain, opts, refs, arrays, dill=False)
        except Exception:
            for name, value in list(plain.items()):   # which ones: each on its own
                try:
                    _dump(value, opts, refs, arrays, dill=False)
                except serialize._NeedDill:
                    needs_dill[name] = plain.pop(name)
                except Exception as e:
                    problems[name] = _why(value, e)
                    del plain[name]
            if plain:
                blobs[GROUPS[0]] = _dump(plain, opts, refs, arrays, dill=False)
        if plain:
            blobs[GROUPS[0]].names = list(plain)  # type: ignore[attr-defined]
    if needs_dill:
        try:
            blobs[GROUPS[1]] = _dump(needs_dill, opts, refs, arrays, dill=True)
        except Exception:
            for name, value in list(needs_dill.items()):
                try:
                    _dump(value, opts, refs, arrays, dill=True)
                except Exception as e:
                    problems[name] = _why(value, e)
                    del needs_dill[name]
            if needs_dill:
                blobs[GROUPS[1]] = _dump(needs_dill, opts, refs, arrays, dill=True)
        if needs_dill:
            blobs[GROUPS[1]].names = list(needs_dill)  # type: ignore[attr-defined]
    return blobs, problems


class Unpickler(serialize._Unpickler):
    """Unpickles a group: references are resolved by ``refs(name)``, notebook classes by
    ``resolve(name)``."""

    def __init__(self, file: BinaryIO, main: types.ModuleType, resolve: Callable[[str], Any],
                 refs: Callable[[str], Any], buffers: list,
                 nested: Callable[[str, Path, str, Any], Any] | None = None) -> None:
        super().__init__(file, main, resolve, buffers)
        self._refs = refs
        self._nested = nested

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == REF:
            return self._refs(pid[1])
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == NESTED:
            _, name, path, kind, state = pid
            return state if self._nested is None else self._nested(name, path, kind, state)
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == MODULE:
            import importlib

            modname, _, name = pid[1].partition(":")
            return getattr(importlib.import_module(modname), name)
        return super().persistent_load(pid)


def load_group(data: bytes, buffers: list, main: types.ModuleType,
               resolve: Callable[[str], Any], refs: Callable[[str], Any],
               nested: Callable[[str, Path, str, Any], Any] | None = None) -> dict[str, Any]:
    """A group's namespace from its (verified) pickle stream and buffers; ``nested(name,
    path, type, state)`` gives the object for an object inside an input (default: ``state``)."""
    value = Unpickler(io.BytesIO(data), main, resolve, refs, buffers, nested).load()
    if not isinstance(value, dict):
        raise pickle.UnpicklingError("a group is not a namespace")
    return value


def arrays_among(*values: Any) -> list[Any]:
    """The numpy arrays among these values and inside them (:func:`_walk`), so that a view
    of one travels as a view of it (an empty list without numpy)."""
    np = sys.modules.get("numpy")
    if np is None:
        return []
    return [v for _, _, v in _walk({str(i): v for i, v in enumerate(values)})
            if type(v) is np.ndarray]
