"""Experiment tracking behind one interface (``Tracker``): MLflow (default) or none."""
from .base import TRACKERS, Tracker, flatten, make_tracker

__all__ = ["TRACKERS", "Tracker", "flatten", "make_tracker"]
