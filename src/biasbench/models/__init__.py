"""Models: a registry and factory (``create_model``), the paper's CNN and ResNet-18."""
from .registry import check_model, count_parameters, create_model, list_models, register_model

__all__ = ["check_model", "count_parameters", "create_model", "list_models", "register_model"]
