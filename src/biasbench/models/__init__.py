"""Models: a registry and factory (``create_model``), the paper's CNN and ResNet-18."""
from .registry import count_parameters, create_model, list_models, register_model

__all__ = ["count_parameters", "create_model", "list_models", "register_model"]
