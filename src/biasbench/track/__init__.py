"""Experiment tracking behind one interface (``Tracker``): MLflow (default), TensorBoard, Aim, none."""
from .base import BACKENDS, MultiTracker, Tracker, flatten, log_to_run_trackers, make_tracker, parse_tracker_names

__all__ = ["BACKENDS", "MultiTracker", "Tracker", "flatten", "log_to_run_trackers", "make_tracker",
           "parse_tracker_names"]
