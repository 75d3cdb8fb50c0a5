"""Snapshots of keyed state: the bytes Bytewax keeps for recovery, made cheap.

Bytewax 0.21 asks every key touched in an epoch for a snapshot, recovery on or not, so
the per-user step (:class:`~attune.operators.user_logic.UserLogic`) and identity
stitching (:class:`~attune.operators.identity.IdentityLogic`) pickle their state often.
The default pickling of a slotted dataclass goes through ``dataclasses``' Python
``__getstate__`` (a ``fields()`` walk per object) and, for an enum member, through
``Enum.__reduce_ex__``; a user's state holds hundreds of such objects (recent
interactions, session touches, buffered events).

:func:`dumps` pickles with a :class:`pickle.Pickler` whose ``reducer_override`` knows
these two kinds of objects:

- a dataclass instance becomes ``(rebuild, (cls, field values))``, the values read by
  one ``attrgetter`` built once per class; :func:`rebuild` sets them back without
  calling ``__init__`` (as the default pickling does, so ``__post_init__`` does not
  run twice and ``init=False`` fields come back too);
- an enum member becomes a reference to ``Class.MEMBER`` (a global, memoised).

Everything else pickles as usual, and :func:`loads` is :func:`pickle.loads`: a snapshot
written by the default pickling still restores, and this one restores in any process
that imports Attune.

>>> from attune.operators.user_state import UserState
>>> st = UserState("u1")
>>> st.activity.events = 3
>>> loads(dumps(st)) == st
True
"""

from __future__ import annotations

import io
import pickle
import threading
from dataclasses import fields, is_dataclass
from enum import Enum
from operator import attrgetter
from typing import Any

_PROTOCOL = pickle.HIGHEST_PROTOCOL

#: Per class: the getter of its field values and their names (``None``: not a dataclass).
_GETTERS: dict[type, tuple[Any, tuple[str, ...]] | None] = {}
#: Per class: the names :func:`rebuild` sets, in field order.
_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _plain_state(cls: type) -> bool:
    """Whether ``cls`` pickles as its field values and nothing else: a slotted dataclass
    (no ``__dict__`` for extra attributes) whose pickling is the default (``object``'s or
    ``dataclasses``' own state), or
    ``(cls, field values)`` (:func:`attune.operators.events._fast_pickle`)."""
    if not is_dataclass(cls) or cls.__dictoffset__ != 0:
        return False
    slots = {s for c in cls.__mro__ for s in getattr(c, "__slots__", ())} - {"__weakref__"}
    if not slots <= set(_names(cls)):
        return False  # an attribute that is not a field would be lost
    getstate = getattr(cls, "__getstate__", None)
    reduce = cls.__reduce__
    default_state = getstate is object.__getstate__
    return (default_state or getattr(getstate, "__qualname__", "") == "_dataclass_getstate") and (
        reduce is object.__reduce__ or reduce.__qualname__ == "_fast_pickle.<locals>.reduce"
    )


def _getter(cls: type) -> tuple[Any, tuple[str, ...]] | None:
    entry = None
    if _plain_state(cls):
        names = _names(cls)
        entry = (attrgetter(*names), names) if names else None
    _GETTERS[cls] = entry
    return entry


def rebuild(cls: type, values: Any) -> Any:
    """A dataclass instance from its field values (a tuple, or the value of a single
    field), without ``__init__``, as the default unpickling of a dataclass does."""
    obj: Any = object.__new__(cls)
    names = _names(cls)
    if len(names) == 1:
        object.__setattr__(obj, names[0], values)
    else:
        for name, value in zip(names, values, strict=True):
            object.__setattr__(obj, name, value)
    return obj


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        entry = _GETTERS[cls] if cls in _GETTERS else _getter(cls)
        if entry is not None:
            return rebuild, (cls, entry[0](obj))
        if isinstance(obj, Enum):
            return getattr, (cls, obj._name_)
        return NotImplemented


class _Reused(threading.local):
    """One pickler and buffer per thread (Bytewax workers are threads): building them
    costs more than pickling a small state."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.pickler = _Pickler(self.buffer, protocol=_PROTOCOL)


_reused = _Reused()


def dumps(obj: Any) -> bytes:
    """``obj`` pickled with the fast reductions of this module (highest protocol)."""
    buffer, pickler = _reused.buffer, _reused.pickler
    try:
        pickler.dump(obj)
        return buffer.getvalue()
    finally:
        pickler.clear_memo()  # holds nothing between snapshots
        buffer.seek(0)
        buffer.truncate()


loads = pickle.loads
