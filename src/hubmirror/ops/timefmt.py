"""How ops answers write the catalog's naive-UTC times: ISO 8601 with a Z."""

from __future__ import annotations

from datetime import datetime


def iso(when: datetime | None) -> str | None:
    return None if when is None else when.replace(microsecond=0).isoformat() + "Z"
