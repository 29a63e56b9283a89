"""Sweeps: grids of trials (spec), the trial function, and the local and Ray runners."""
