"""Biased MNIST: MNIST source, factors, recipes, the renderer and the dataset class.

``from biasbench.data import BiasedMNIST`` is resolved lazily so that low-level modules
(factors, render) can be imported by :mod:`biasbench.config` without an import cycle.
"""
from .factors import FACTORS, MODES

__all__ = ["BiasedMNIST", "FACTORS", "MODES", "SPLITS"]


def __getattr__(name):
    if name in ("BiasedMNIST", "SPLITS"):
        from . import biased_mnist

        return getattr(biased_mnist, name)
    raise AttributeError(name)
