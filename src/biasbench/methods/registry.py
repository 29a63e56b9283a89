"""Method registry: ``@register_method`` on a :class:`Method` subclass; look-up by name."""
from __future__ import annotations

from ..errors import BiasbenchError

_METHODS: dict = {}


def register_method(cls):
    _METHODS[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    from . import (cvar_dro, group_dro, irm, lff, lnl, resample, rubi, sd, stdm, upweight,  # noqa: F401
                   vrex)  # (registration)


def list_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def get_method_class(name: str):
    _ensure_loaded()
    if name not in _METHODS:
        raise BiasbenchError(f"unknown method {name!r}; expected one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
