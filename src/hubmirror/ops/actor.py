"""Who performs an action, as the audit log records it."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass

from ..model.access import Principal


@dataclass(frozen=True, slots=True)
class Actor:
    """`name` is who (`cli:alice`, `user:bob (token ci)`), `client` where from (`local`, an address)."""

    name: str
    client: str

    @classmethod
    def local(cls) -> Actor:
        """The CLI: the operating-system user on this machine."""
        try:
            who = getpass.getuser()
        except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (containers)
            who = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
        return cls(f"cli:{who}", "local")

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        """A request's principal (the admin API, the UI)."""
        return cls(principal.actor, principal.client)
