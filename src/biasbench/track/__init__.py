"""Experiment tracking behind one interface (``Tracker``): MLflow (default), TensorBoard, Aim, none."""
from .base import BACKENDS, TRACKERS, MultiTracker, Tracker, flatten, make_tracker, parse_tracker_names

__all__ = ["BACKENDS", "TRACKERS", "MultiTracker", "Tracker", "flatten", "make_tracker", "parse_tracker_names"]
