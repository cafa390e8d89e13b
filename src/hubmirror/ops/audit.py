"""The audit log as people and scripts read it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..catalog import Catalog
from ..catalog.schema import utcnow
from ..errors import InvalidInput
from ..model.names import RepoRef, RepoType
from .timefmt import iso


def list_events(catalog: Catalog, since: timedelta | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Entries of the last `since` (all without), at most the newest `limit`, oldest first: each
    {time, action, actor, client, repo_type, repo_id, repo, detail}."""
    if limit is not None and limit < 1:
        raise InvalidInput(f"invalid limit {limit}: at least 1")
    if since is not None and since <= timedelta(0):
        raise InvalidInput("invalid since: a duration of more than 0")
    events = catalog.audit_events(since=utcnow() - since if since is not None else None, limit=limit)
    out = []
    for e in events:
        repo = None
        if e["repo_type"] and e["repo_id"]:
            try:
                repo = str(RepoRef(RepoType(e["repo_type"]), e["repo_id"]))
            except ValueError:
                repo = f"{e['repo_type']}:{e['repo_id']}"
        out.append({"time": iso(e["at"]), "action": e["action"], "actor": e["actor"], "client": e["client"],
                    "repo_type": e["repo_type"], "repo_id": e["repo_id"], "repo": repo, "detail": e["detail"]})
    return out
