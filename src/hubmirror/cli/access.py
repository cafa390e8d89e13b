"""CLI: users, groups, tokens and the audit log. Parses arguments, calls hubmirror.ops, prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .base import _config_option, _settings, cli, json_failures

DATA = click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
JSON = click.option("--json", "as_json", is_flag=True,
                    help='Print JSON; a failure too, as {"status": "failed", "error": ...}.')


def _catalog(ctx: click.Context, data: Path | None) -> Any:
    """The catalog alone: these commands touch no blob, so the store is neither opened nor swept."""
    from ..catalog import Catalog
    from ..errors import ConfigError

    s = _settings(ctx, data=data)
    if s.database_url is None:
        try:
            s.data.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"data directory {str(s.data)!r} cannot be created: {e.strerror}") from None
    catalog = Catalog(s.catalog_url)
    catalog.migrate()
    return catalog


def _actor() -> Any:
    from ..ops import Actor

    return Actor.local()


def _when(value: str | None) -> str:
    """An ISO time from ops (`2025-01-02T03:04:05Z`) as a table shows it."""
    return "-" if value is None else value.replace("T", " ")[:16]


# -- users ---------------------------------------------------------------------------------------


@cli.group()
def user() -> None:
    """Users (who tokens belong to) and their groups (what access rules name)."""


@user.command("add")
@_config_option
@click.argument("name")
@click.option("--group", "groups", multiple=True, metavar="GROUP", help="A group to put the user in; repeatable.")
@DATA
@JSON
@click.pass_context
@json_failures
def user_add(ctx: click.Context, name: str, groups: tuple[str, ...], data: Path | None, as_json: bool) -> None:
    """Create user NAME (1-64 of A-Z a-z 0-9 . _ -)."""
    from .. import ops

    row = ops.add_user(_catalog(ctx, data), _actor(), name, groups)
    if as_json:
        click.echo(json.dumps({"status": "created", **ops.user_json(row)}))
    else:
        click.echo(f"added user {row.name}" + (f" in groups {', '.join(row.groups)}" if row.groups else ""))


@user.command("list")
@_config_option
@DATA
@JSON
@click.pass_context
@json_failures
def user_list(ctx: click.Context, data: Path | None, as_json: bool) -> None:
    """List users with their groups."""
    from .. import ops

    rows = [ops.user_json(u) for u in ops.list_users(_catalog(ctx, data))]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for u in rows:
        click.echo(f"{u['name']:24} {_when(u['created_at']):16}  {','.join(u['groups']) or '-'}")


@user.command("remove")
@_config_option
@click.argument("name")
@DATA
@JSON
@click.pass_context
@json_failures
def user_remove(ctx: click.Context, name: str, data: Path | None, as_json: bool) -> None:
    """Remove user NAME, its group memberships and its tokens (which stop working at once)."""
    from .. import ops

    tokens = ops.remove_user(_catalog(ctx, data), _actor(), name)
    if as_json:
        click.echo(json.dumps({"status": "removed", "name": name, "tokens_deleted": tokens}))
    else:
        click.echo(f"removed user {name}" + (f" and its tokens {', '.join(tokens)}" if tokens else ""))


@user.command("group")
@_config_option
@click.argument("name")
@click.option("--add", "add", multiple=True, metavar="GROUP", help="Put the user in GROUP; repeatable.")
@click.option("--remove", "remove", multiple=True, metavar="GROUP", help="Take the user out of GROUP; repeatable.")
@DATA
@JSON
@click.pass_context
@json_failures
def user_group(ctx: click.Context, name: str, add: tuple[str, ...], remove: tuple[str, ...], data: Path | None,
               as_json: bool) -> None:
    """Change the groups of user NAME (every name is checked before anything changes)."""
    from .. import ops

    catalog = _catalog(ctx, data)
    changes = ops.change_groups(catalog, _actor(), name, add, remove)
    row = catalog.get_user(name)
    groups = list(row.groups) if row else []
    if as_json:
        click.echo(json.dumps({"status": "updated", "name": name, "groups": groups, "changes": changes}))
        return
    for ch in changes:
        click.echo(f"{name}: {ch['group']} {ch['change']}")
    click.echo(f"{name} is in: {', '.join(groups) or 'no group'}")


# -- tokens --------------------------------------------------------------------------------------


@cli.group()
def token() -> None:
    """Tokens: clients send them as `Authorization: Bearer TOKEN` (HF_TOKEN, `hf auth login`)."""


@token.command("create")
@_config_option
@click.argument("name")
@click.option("--user", required=True, help="The user the token acts as.")
@click.option("--role", default="read", show_default=True, metavar="read|write|admin",
              help="read: read what the policy allows; write: and write; admin: everything, and the admin API.")
@click.option("--expires", metavar="DURATION", help="Expire after DURATION (90d, 12h, 30m) [default: never].")
@click.option("--repo", "repos", multiple=True, metavar="PATTERN",
              help="Limit the token to repos matching PATTERN (acme/*, datasets/acme/*, re:REGEX); repeatable.")
@DATA
@JSON
@click.pass_context
@json_failures
def token_create(ctx: click.Context, name: str, user: str, role: str, expires: str | None, repos: tuple[str, ...],
                 data: Path | None, as_json: bool) -> None:
    """Create token NAME for a user and print it, once: it is stored only as a hash, and nothing can
    show it again. The token alone goes to stdout (TOKEN=$(hubmirror token create ...)); with --json,
    it is the "token" of the object printed."""
    from .. import ops

    lifetime = ops.parse_duration(expires, "--expires") if expires is not None else None
    new = ops.create_token(_catalog(ctx, data), _actor(), name, user, role, lifetime, list(repos) or None)
    if as_json:
        click.echo(json.dumps({"status": "created", **new.to_json()}))
        return
    info = ops.token_json(new.info)
    limits = f", limited to {' '.join(info['repos'])}" if info["repos"] else ""
    click.echo(f"created token {info['name']} for user {info['user']}: role {info['role']}, "
               f"expires {info['expires_at'] or 'never'}{limits}", err=True)
    click.echo("it is shown once, now, and never again: store it (e.g. HF_TOKEN=...)", err=True)
    click.echo(new.token)


@token.command("list")
@_config_option
@click.option("--user", help="Only the tokens of this user.")
@DATA
@JSON
@click.pass_context
@json_failures
def token_list(ctx: click.Context, user: str | None, data: Path | None, as_json: bool) -> None:
    """List tokens: name, user, role, state (active, expired, revoked), created, expires, revoked,
    last used, repos. Never the token or its hash: nothing stored can show them."""
    from .. import ops

    rows = [ops.token_json(t) for t in ops.list_tokens(_catalog(ctx, data), user)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if rows:
        click.echo(f"{'NAME':20} {'USER':16} {'ROLE':5} {'STATE':7} {'CREATED':16} {'EXPIRES':16} "
                   f"{'REVOKED':16} {'LAST USED':16} REPOS")
    for t in rows:
        click.echo(f"{t['name']:20} {t['user']:16} {t['role']:5} {t['state']:7} {_when(t['created_at']):16} "
                   f"{_when(t['expires_at']):16} {_when(t['revoked_at']):16} {_when(t['last_used_at']):16} "
                   f"{' '.join(t['repos']) if t['repos'] else '*'}")


@token.command("revoke")
@_config_option
@click.argument("name")
@DATA
@JSON
@click.pass_context
@json_failures
def token_revoke(ctx: click.Context, name: str, data: Path | None, as_json: bool) -> None:
    """Revoke token NAME: it stops working at once (the row stays, for the record)."""
    from .. import ops

    row, changed = ops.revoke_token(_catalog(ctx, data), _actor(), name)
    info = ops.token_json(row)
    if as_json:
        click.echo(json.dumps({"status": "revoked" if changed else "already revoked", **info}))
    elif changed:
        click.echo(f"revoked token {row.name} of user {row.user}")
    else:
        click.echo(f"token {row.name} was revoked already (at {info['revoked_at']})")


# -- audit ---------------------------------------------------------------------------------------


@cli.command()
@_config_option
@click.option("--since", metavar="DURATION", help="Only the last DURATION (1d, 12h, 30m) [default: all].")
@click.option("--limit", type=int, default=100, show_default=True, help="At most the newest N entries.")
@DATA
@JSON
@click.pass_context
@json_failures
def audit(ctx: click.Context, since: str | None, limit: int, data: Path | None, as_json: bool) -> None:
    """The audit log, oldest first: time, action, actor, client, repo, detail."""
    from .. import ops

    window = ops.parse_duration(since, "--since") if since is not None else None
    events = ops.list_events(_catalog(ctx, data), window, limit)
    if as_json:
        click.echo(json.dumps(events))
        return
    for e in events:
        detail = json.dumps(e["detail"], separators=(",", ":")) if e["detail"] else ""
        click.echo(f"{(e['time'] or '-').replace('T', ' ')} {e['action']:20} {e['actor'] or '-':24} "
                   f"{e['client'] or '-':15} {e['repo'] or '-'}  {detail}")
