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

- a dataclass instance becomes ``(restore, ("module:QualName", field values))``, the
  values read by one ``attrgetter`` built once per class; :func:`restore` finds the
  class by that name (once per process) and sets the values back without calling
  ``__init__`` (as the default pickling does, so ``__post_init__`` does not run twice
  and ``init=False`` fields come back too). The class travels as a string, not by
  reference: a string is memoised and written by the C pickler at once, where a class
  reference costs a call of :meth:`reducer_override <_Pickler.reducer_override>` and
  a module lookup per class per snapshot;
- an enum member becomes a reference to ``Class.MEMBER`` (a global, memoised);
- a dataclass with fields annotated ``list[X]``, ``X`` such a dataclass (a user's recent
  interactions and session touches: most of the objects of a state), becomes
  ``(restore_packed, ("module:QualName", field values))`` where each such list is
  ``(0, [X's field values, ...])`` (a list of ``X`` alone; ``X`` frozen) or ``(1, the
  value)``: the rows
  are read by ``X``'s getter mapped in C and rebuilt by ``X``'s maker, instead of one
  :meth:`reducer_override <_Pickler.reducer_override>` and one :func:`restore` call per
  item (~25 items per active user, every snapshot and thaw).

Everything else pickles as usual, and :func:`loads` is :func:`pickle.loads`: a snapshot
written by the default pickling still restores, so does one written in the earlier
format of this module, ``(rebuild, (cls, field values))`` (:func:`rebuild` stays for
them), and this one restores in any process that imports Attune.

>>> from attune.operators.user_state import UserState
>>> st = UserState("u1")
>>> st.activity.events = 3
>>> loads(dumps(st)) == st
True
"""

from __future__ import annotations

import importlib
import io
import pickle
import threading
import typing
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from operator import attrgetter
from typing import Any

_PROTOCOL = pickle.HIGHEST_PROTOCOL

#: Per class: the function that restores it, its ``"module:QualName"`` and the getter of
#: its field values (``None``: it pickles as usual).
_ENTRIES: dict[type, tuple[Any, str, Any] | None] = {}
#: Per class: the names :func:`restore` sets, in field order.
_NAMES: dict[type, tuple[str, ...]] = {}
#: ``"module:QualName"`` -> class, for :func:`restore`.
_CLASSES: dict[str, type] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _plain_state(cls: type) -> bool:
    """Whether ``cls`` pickles as its field values and nothing else: a slotted dataclass
    (no ``__dict__`` for extra attributes) whose pickling is the default (``object``'s or
    ``dataclasses``' own state), or
    its field values in another shape (a reduce marked ``state_is_fields``:
    :func:`attune.operators.events._fast_pickle`, ``Event.__reduce__``)."""
    if not is_dataclass(cls) or cls.__dictoffset__ != 0:
        return False
    slots = {s for c in cls.__mro__ for s in getattr(c, "__slots__", ())} - {"__weakref__"}
    if not slots <= set(_names(cls)):
        return False  # an attribute that is not a field would be lost
    getstate = getattr(cls, "__getstate__", None)
    reduce = cls.__reduce__
    default_state = getstate is object.__getstate__
    return (default_state or getattr(getstate, "__qualname__", "") == "_dataclass_getstate") and (
        reduce is object.__reduce__ or getattr(reduce, "state_is_fields", False)
    )


def _entry(cls: type) -> tuple[Any, str, Any] | None:
    entry: tuple[Any, str, Any] | None = None
    _ENTRIES[cls] = None  # while it is worked out (a field's class may be this one)
    if _plain_state(cls):
        names = _names(cls)
        name = f"{cls.__module__}:{cls.__qualname__}"
        if names and _found(name) is cls:  # not a class a name cannot find (a local one)
            _CLASSES[name] = cls
            getter = attrgetter(*names)
            packed = _packed_fields(cls)
            if packed:
                entry = (restore_packed, name, _packing_getter(getter, packed))
            else:
                entry = (restore, name, getter)
    _ENTRIES[cls] = entry
    return entry


def _packed_fields(cls: type) -> tuple[tuple[int, type, Any], ...]:
    """The fields of ``cls`` annotated ``list[X]`` with ``X`` a frozen class :func:`_entry`
    packs as its field values (and none of its own lists): (field index, ``X``, ``X``'s
    getter). Frozen: the rows restore as one object per row, so an item in two lists (or
    twice in one) comes back as equal objects, not the same one; immutable, that is the same.
    None for a class of one field (its getter gives the value, not a tuple of values)."""
    if len(_names(cls)) < 2:
        return ()
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no packing
        return ()
    out: list[tuple[int, type, Any]] = []
    for i, name in enumerate(_names(cls)):
        hint = hints.get(name)
        if typing.get_origin(hint) is not list:
            continue
        (item,) = typing.get_args(hint) or (None,)
        if not isinstance(item, type) or item is cls:
            continue
        if not getattr(getattr(item, "__dataclass_params__", None), "frozen", False):
            continue  # a mutable item shared by two lists must stay one object: not packed
        entry = _ENTRIES[item] if item in _ENTRIES else _entry(item)
        if entry is not None and entry[0] is restore:
            out.append((i, item, entry[2]))
    return tuple(out)


def _packing_getter(getter: Any, packed: tuple[tuple[int, type, Any], ...]) -> Any:
    """The field values of an instance, its :func:`_packed_fields` as ``(0, rows)`` when the
    list holds instances of exactly ``X`` (``X``'s getter mapped over it, in C), else
    ``(1, value)``."""

    def values(obj: Any) -> tuple[Any, ...]:
        out = list(getter(obj))
        for i, item, item_getter in packed:
            value = out[i]
            if type(value) is list and (not value or set(map(type, value)) == {item}):
                out[i] = (0, list(map(item_getter, value)))
            else:
                out[i] = (1, value)
        return tuple(out)

    return values


def _resolve(name: str) -> Any:
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _found(name: str) -> Any:
    """What ``name`` resolves to, ``None`` when nothing."""
    try:
        return _resolve(name)
    except (ImportError, AttributeError):
        return None


def _class(name: str) -> type:
    """The class named ``"module:QualName"`` (imported on first use, then cached)."""
    cls = _CLASSES.get(name)
    if cls is None:
        cls = _CLASSES[name] = _resolve(name)
    return cls


def _set(cls: type, values: Any) -> Any:
    """An instance of ``cls`` (no ``__init__``) with its field values set from ``values``."""
    maker = _maker_of(cls)
    try:
        return maker(values)
    except ValueError:  # fewer values than fields: a snapshot from before a field was added
        return _with_defaults(cls, values)


def _with_defaults(cls: type, values: Any) -> Any:
    """An instance of ``cls`` from the values of its first fields, the fields added since
    set to their defaults: a snapshot written before a class gained a field (at its end,
    with a default) still restores. Anything else is an error that names the class.

    >>> from attune.operators.user_state import UserState
    >>> old = tuple(getattr(UserState("u1"), n) for n in _names(UserState)[:-1])
    >>> _with_defaults(UserState, old) == UserState("u1")
    True
    """
    names = _names(cls)
    given = values if type(values) is tuple else (values,)
    found = {f.name: f for f in fields(cls)}
    if len(given) > len(names):
        raise ValueError(f"a snapshot of {cls.__qualname__} has more values than its fields")
    rest = []
    for name in names[len(given) :]:
        f = found.get(name)
        if f is not None and f.default is not MISSING:
            rest.append(f.default)
        elif f is not None and f.default_factory is not MISSING:
            rest.append(f.default_factory())
        else:
            raise ValueError(
                f"a snapshot of {cls.__qualname__} lacks {name!r}, which has no default"
            )
    return _set_by_name(cls, names, (*given, *rest))


#: Per class: the function :func:`_set` builds its instances with (:func:`_maker`).
_MAKERS: dict[type, Any] = {}


def _maker_of(cls: type) -> Any:
    """The maker of ``cls`` (:func:`_maker`), compiled on first use."""
    maker = _MAKERS.get(cls)
    if maker is None:
        maker = _MAKERS[cls] = _maker(cls)
    return maker


def _slot_setter(cls: type, name: str) -> Any:
    """The ``__set__`` of the slot ``name`` of ``cls`` (``None``: not a slot)."""
    for klass in cls.__mro__:
        descriptor = klass.__dict__.get(name)
        if descriptor is not None:
            return descriptor.__set__ if type(descriptor).__name__ == "member_descriptor" else None
    return None


def _maker(cls: type) -> Any:
    """A function ``values -> instance of cls``, compiled once per class: ``object.__new__``,
    then one statement per field, a plain assignment or (a frozen class, or one with a
    ``__setattr__`` of its own) a call of the slot's descriptor, as the generated
    ``__init__`` of a dataclass is one statement per field. A loop of ``object.__setattr__``
    by name cost ~2x the instructions per object."""
    names = _names(cls)
    setters = [_slot_setter(cls, name) for name in names]
    if not names or None in setters or not all(n.isidentifier() for n in names):
        return lambda values: _set_by_name(cls, names, values)  # not expected; still right
    plain = cls.__setattr__ is object.__setattr__  # type: ignore[comparison-overlap]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["def make(values):", "    obj = _new(_cls)"]
    values = [f"_v{i}" for i in range(len(names))]
    lines.append(f"    {', '.join(values)} = values" if len(names) > 1 else "    _v0 = values")
    for i, (name, setter) in enumerate(zip(names, setters, strict=True)):
        if plain:
            lines.append(f"    obj.{name} = _v{i}")
        else:
            namespace[f"_s{i}"] = setter
            lines.append(f"    _s{i}(obj, _v{i})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # the names are identifiers of the class's fields
    return namespace["make"]


def _set_by_name(cls: type, names: tuple[str, ...], values: Any) -> Any:
    obj: Any = object.__new__(cls)
    if len(names) == 1:
        object.__setattr__(obj, names[0], values)
    else:
        for name, value in zip(names, values, strict=True):
            object.__setattr__(obj, name, value)
    return obj


def restore(name: str, values: Any) -> Any:
    """A dataclass instance of the class named ``"module:QualName"`` from its field values
    (a tuple, or the value of a single field), without ``__init__``, as the default
    unpickling of a dataclass does."""
    maker = _MAKERS_BY_NAME.get(name)
    if maker is None:
        cls = _class(name)
        maker = _maker_of(cls)
        _MAKERS_BY_NAME[name] = maker
    try:
        return maker(values)
    except ValueError:  # fewer values than fields: a snapshot from before a field was added
        return _with_defaults(_class(name), values)


#: ``"module:QualName"`` -> the maker of that class, for :func:`restore`.
_MAKERS_BY_NAME: dict[str, Any] = {}


def restore_packed(name: str, values: tuple[Any, ...]) -> Any:
    """:func:`restore` for a class with packed list fields (:func:`_packed_fields`): each
    ``(0, rows)`` becomes a list of ``X`` again, each ``(1, value)`` that value."""
    unpack = _UNPACKERS.get(name)
    if unpack is None:
        cls = _class(name)
        maker = _maker_of(cls)
        makers = []
        for i, item, _ in _packed_fields(cls):
            makers.append((i, _maker_of(item)))
        unpack = _UNPACKERS[name] = (maker, tuple(makers))
    maker, items = unpack
    out = list(values)
    for i, item_maker in items:
        kind, payload = out[i]
        out[i] = list(map(item_maker, payload)) if kind == 0 else payload
    return maker(out)


#: ``"module:QualName"`` -> its maker and, per packed field, (index, maker of its items).
_UNPACKERS: dict[str, tuple[Any, tuple[tuple[int, Any], ...]]] = {}


def rebuild(cls: type, values: Any) -> Any:
    """:func:`restore` for snapshots written before it, which name the class by reference:
    kept so that they still load."""
    return _set(cls, values)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        try:
            entry = _ENTRIES[cls]
        except KeyError:
            entry = _entry(cls)
        if entry is not None:
            return entry[0], (entry[1], entry[2](obj))
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
