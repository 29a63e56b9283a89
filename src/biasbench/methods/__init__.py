"""Training methods: one class per file, registered by name (DomainBed-style interface)."""
from .base import Batch, Method, TrainInfo
from .registry import get_method_class, list_methods, register_method

__all__ = ["Batch", "Method", "TrainInfo", "get_method_class", "list_methods", "register_method"]
