"""Writing a new state into an existing object, so that every other name for it (and every
numpy view of it) sees the change: lists, dicts, sets, bytearrays, numpy arrays, pandas
objects, instances. Kernel side; used for the inputs a job mutated and the objects inside them.
"""

from __future__ import annotations

import sys
from typing import Any


def _update_numpy(target: Any, new: Any) -> bool:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(target, np.ndarray) or not isinstance(new, np.ndarray):
        return False
    if target.shape != new.shape or target.dtype != new.dtype or not target.flags.writeable:
        return False
    target[...] = new
    return True


def _update_pandas(target: Any, new: Any) -> bool:
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(target, (pd.DataFrame, pd.Series)):
        return False
    update = getattr(target, "_update_inplace", None)
    if update is None or type(target) is not type(new):
        return False
    update(new)
    target.attrs = dict(new.attrs)
    return True


def _update_state(target: Any, new: Any) -> bool:
    """An instance's attributes (``__dict__`` and slots) replaced by the new ones."""
    if type(target) is not type(new) or isinstance(target, type):
        return False
    if getattr(type(target), "__setstate__", None) is not None:
        reduced = new.__reduce_ex__(2)
        if len(reduced) > 2 and reduced[2] is not None:
            target.__setstate__(reduced[2])   # the type's own way of taking a state
            return True
    changed = False
    if hasattr(target, "__dict__") and hasattr(new, "__dict__"):
        target.__dict__.clear()
        target.__dict__.update(new.__dict__)
        changed = True
    for cls in type(target).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot in ("__dict__", "__weakref__"):
                continue
            if hasattr(new, slot):
                setattr(target, slot, getattr(new, slot))
            elif hasattr(target, slot):
                delattr(target, slot)
            changed = True
    return changed


def update_in_place(target: Any, new: Any) -> bool:
    """Write ``new``'s state into ``target``; False if ``target`` cannot take it."""
    if target is new:
        return True
    try:
        if isinstance(target, list) and isinstance(new, list):
            target[:] = new
        elif isinstance(target, dict) and isinstance(new, dict):
            target.clear()
            target.update(new)
            if hasattr(target, "__dict__") and hasattr(new, "__dict__"):
                target.__dict__.update(new.__dict__)   # defaultdict factory, subclass attrs
        elif isinstance(target, set) and isinstance(new, set):
            target.clear()
            target |= new
        elif isinstance(target, bytearray) and isinstance(new, (bytes, bytearray)):
            target[:] = new
        elif _update_numpy(target, new) or _update_pandas(target, new):
            pass
        else:
            return _update_state(target, new)
    except Exception:
        return False
    return True


def unchanged(target: Any, new: Any) -> bool:
    """A pandas object whose new state equals its own: writing it in would only cut the memory
    it shares with other objects here (its columns, arrays taken from it)."""
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(target, (pd.DataFrame, pd.Series)) \
            or type(target) is not type(new):
        return False
    try:
        return bool(target.equals(new)) and target.attrs == new.attrs
    except Exception:
        return False
