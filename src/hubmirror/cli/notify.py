"""Outgoing webhooks: `notify log`, `notify test`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .base import _config_option, _settings, cli, json_failures


@cli.group()
def notify() -> None:
    """Outgoing webhooks ([[notify]] tables): the delivery log and a test event."""


@notify.command("log")
@_config_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(0, 100_000), help="Newest N deliveries.")
@click.option("--target", help="Only the [[notify]] table with this name.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
@click.pass_context
@json_failures
def notify_log(ctx: click.Context, limit: int, target: str | None, data: Path | None, as_json: bool) -> None:
    """The webhook delivery log, newest first: event, target, status, attempts, last answer or error."""
    from ..app import open_services
    from ..ops import notify as ops_notify

    services = open_services(_settings(ctx, data=data))
    rows = ops_notify.delivery_log(services.catalog, limit=limit, target=target)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no deliveries yet ([[notify]] tables in the config file; a running server sends them)")
        return
    for r in rows:
        repo = f" {r['repo_type']}/{r['repo_id']}" if r["repo_id"] else ""
        last = f" last {r['last_status']}" if r["last_status"] is not None else ""
        when = r["delivered_at"] or (f"next {r['next_attempt_at']}" if r["next_attempt_at"] else "")
        click.echo(f"{r['created_at']} {r['event']:16} {r['status']:9} attempts {r['attempts']}{last} "
                   f"{when} -> {r['target']}{repo}" + (f"\n    error: {r['last_error']}" if r["last_error"]
                                                        and r["status"] != "delivered" else ""))


@notify.command("test")
@_config_option
@click.option("--target", help="Only the [[notify]] table with this name (default: every one).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.pass_context
def notify_test(ctx: click.Context, target: str | None, data: Path | None) -> None:
    """Queue a `test` event; the running server delivers it (see `hubmirror notify log`)."""
    from .. import ops
    from ..app import open_services
    from ..ops import notify as ops_notify

    s = _settings(ctx, data=data)
    services = open_services(s)
    event = ops_notify.send_test(services.catalog, ops.Actor.local(), s.notify, target)
    click.echo(f"queued test event {event} for {target or 'every [[notify]] target'}; a running `hubmirror serve` "
               f"delivers it (hubmirror notify log)")
