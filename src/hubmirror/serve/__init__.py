"""The read stack: a Reader protocol and its layers (see base.py)."""

from .base import FileHit, Reader, Snapshot
from .local import LocalReader
from .pullthrough import PullThrough
from .stream import Body

__all__ = ["Body", "FileHit", "LocalReader", "PullThrough", "Reader", "Snapshot"]
