"""Method registry: ``@register_method`` on a :class:`Method` subclass; look-up by name."""
from __future__ import annotations

from ..errors import BiasbenchError

_METHODS: dict = {}


def register_method(cls):
    _METHODS[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    from . import (coral, cvar_dro, dfr, fish, focal, group_dro, irm, jtt, learned_mixin, lff, lisa, lnl,  # noqa: F401
                   mixup, mmd, rebias, resample, rubi, sd, stdm, upweight, vrex)  # (registration)


def list_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def get_method_class(name: str):
    _ensure_loaded()
    if name not in _METHODS:
        raise BiasbenchError(f"unknown method {name!r}; expected one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


METHOD_ORDER = ["stdm", "upweight", "group_dro", "rubi", "lnl", "irm", "lff", "sd"]
"""The paper's eight in Table 1's order: always listed in Table 1, and first everywhere."""


def method_order(methods) -> list[str]:
    """The methods present in ``methods``: the paper's eight in Table 1's order, then the others by name."""
    present = set(methods)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_name(method: str) -> str:
    """The name a table or figure shows: the method class's ``display_name`` (StdM, UpWt, ..., VREx), or the
    id itself for a method this version does not know (records of another version)."""
    _ensure_loaded()
    cls = _METHODS.get(method)
    return cls.display_name if cls is not None else method
