"""Notifications and post-sync hooks, as the CLI (and later the admin API and the UI) ask about
them: the webhook delivery log, a test event, hook results (src/hubmirror/events/ does the work)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..catalog import Catalog
from ..catalog.schema import utcnow
from ..errors import ConfigError, NotFound
from ..events.kinds import TEST_EVENT
from ..events.settings import NotifySettings
from ..model.names import RepoRef
from .actor import Actor


def delivery_log(catalog: Catalog, *, limit: int = 50, target: str | None = None) -> list[dict[str, Any]]:
    """The newest webhook deliveries first (never a URL's credentials or query)."""
    return catalog.delivery_log(limit=limit, target=target)


def delivery_summary(catalog: Catalog, since: timedelta = timedelta(days=1)) -> dict[str, int]:
    """Deliveries of the last `since`, by status (queued, sending, delivered, failed)."""
    return catalog.delivery_counts(utcnow() - since)


def send_test(catalog: Catalog, actor: Actor, targets: list[NotifySettings], name: str | None = None) -> int:
    """Queue a `test` event for every [[notify]] target, or the one named; a running server sends it."""
    if not targets:
        raise ConfigError("no [[notify]] tables are configured (see README: Notifications and post-sync hooks)")
    if name is not None and name not in {t.key for t in targets}:
        raise NotFound(f"no [[notify]] table is named {name!r}; configured: {', '.join(t.key for t in targets)}")
    event = catalog.emit_event(TEST_EVENT, None, message="a test notification from hubmirror", target=name)
    if event is None:
        raise ConfigError("the catalog could not record the test event (see the log)")
    catalog.audit("notify-test", None, actor=actor.name, client=actor.client, target=name, event=event)
    return event


def hook_results(catalog: Catalog, ref: RepoRef, *, latest_only: bool = False, limit: int = 20) -> list[dict[str, Any]]:
    """Post-sync hook runs of a repo, newest first (`latest_only`: the newest of each hook)."""
    return catalog.hook_runs(ref, limit=limit, latest_only=latest_only)
