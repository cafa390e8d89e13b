"""Durations as people write them on a command line or in a request: 90d, 12h, 30m."""

from __future__ import annotations

import re
from datetime import timedelta

from ..catalog.access import quoted
from ..errors import InvalidInput

_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION = timedelta(days=100 * 366)


def parse_duration(value: str, what: str = "duration") -> timedelta:
    """A positive number and a unit: s (seconds), m (minutes), h (hours), d (days), w (weeks)."""
    m = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise InvalidInput(f"invalid {what} {quoted(value, 40)}: use a number and a unit, such as 90d, 12h, 30m "
                           f"(units: s, m, h, d, w)")
    d = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if not timedelta(0) < d <= MAX_DURATION:
        raise InvalidInput(f"invalid {what} {quoted(value.strip(), 40)}: it must be more than 0 and at most 100 years")
    return d
