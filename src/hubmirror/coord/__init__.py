"""Coordination seams (DESIGN.md principle 8). Today one process on one box: in-process single
flight; the repo and gc locks still live in locks.py."""

from .local import SingleFlight

__all__ = ["SingleFlight"]
