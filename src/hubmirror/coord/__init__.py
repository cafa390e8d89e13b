"""Coordination seams (DESIGN.md principle 8). Today one process on one box: in-process single
flight and rate counters, per-process bandwidth pacing; the repo and gc locks still live in locks.py."""

from .limits import (
    Bandwidth,
    MemoryRateCounters,
    Pacer,
    Rate,
    RateCounters,
    Verdict,
    parse_bandwidth,
    parse_rate,
    ratelimit_headers,
)
from .local import SingleFlight

__all__ = [
    "Bandwidth",
    "MemoryRateCounters",
    "Pacer",
    "Rate",
    "RateCounters",
    "SingleFlight",
    "Verdict",
    "parse_bandwidth",
    "parse_rate",
    "ratelimit_headers",
]
