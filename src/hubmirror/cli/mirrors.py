"""Declared mirrors and their status: `mirror add|remove|freeze|list`, `status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..model.names import RepoRef
from .base import REPO_TYPES, _config_option, _settings, cli
from .repos import _mirror_spec


def _declared(s: Settings) -> set[RepoRef]:
    """The mirrors the config file declares: changed there, not here."""
    return {m.ref for m in s.mirrors}


@cli.group()
def mirror() -> None:
    """Declare repos the server keeps in sync (stored in the catalog; [[mirrors]] in the config file too)."""


@mirror.command("add")
@_config_option
@click.argument("repo_id")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--revision", "revisions", multiple=True, help="Branch, tag or glob (v*); repeatable [default: main].")
@click.option("--include", multiple=True, help="Only files matching this glob; repeatable.")
@click.option("--exclude", multiple=True, help="Skip files matching this glob; repeatable.")
@click.option("--schedule", default="1h", show_default=True, help="Interval (30m, 6h, 1d) or cron expression.")
@click.option("--disabled", is_flag=True, help="Declare it but do not sync it yet.")
@click.option("--allow-gated", is_flag=True, help="Allow a private or gated upstream repo (served to anyone).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.pass_context
def mirror_add(ctx: click.Context, repo_id: str, repo_type: str, revisions: tuple[str, ...], include: tuple[str, ...],
               exclude: tuple[str, ...], schedule: str, disabled: bool, allow_gated: bool, data: Path | None) -> None:
    """Declare (or update) a mirror of REPO_ID."""
    from .. import ops
    from ..app import open_services

    spec = _mirror_spec(repo_id, repo_type, revisions, include, exclude, schedule=schedule, enabled=not disabled,
                        allow_gated=allow_gated)
    s = _settings(ctx, data=data)
    services = open_services(s)
    ops.add_mirror(services.catalog, ops.Actor.local(), spec, source="cli", declared=_declared(s))
    click.echo(f"mirror {spec.ref}: revisions {', '.join(spec.revisions)}, schedule {spec.schedule}"
               f"{'' if spec.enabled else ' (disabled)'}")


@mirror.command("remove")
@_config_option
@click.argument("repo_id")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.pass_context
def mirror_remove(ctx: click.Context, repo_id: str, repo_type: str, data: Path | None) -> None:
    """Stop following REPO_ID. What was mirrored stays served."""
    from .. import ops
    from ..app import open_services

    ref = RepoRef.parse(repo_id, repo_type)
    s = _settings(ctx, data=data)
    services = open_services(s)
    ops.remove_mirror(services.catalog, ops.Actor.local(), ref, declared=_declared(s))
    click.echo(f"mirror {ref} removed (its content stays served)")


@mirror.command("freeze")
@_config_option
@click.argument("repo_id")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--undo", is_flag=True, help="Unfreeze: sync it again on its schedule.")
@click.pass_context
def mirror_freeze(ctx: click.Context, repo_id: str, repo_type: str, data: Path | None, undo: bool) -> None:
    """Freeze a declared mirror: no more syncs, everything mirrored stays served."""
    from .. import ops
    from ..app import open_services

    ref = RepoRef.parse(repo_id, repo_type)
    s = _settings(ctx, data=data)
    services = open_services(s)
    ops.freeze_mirror(services.catalog, ops.Actor.local(), ref, undo, declared=_declared(s))
    click.echo(f"mirror {ref} {'unfrozen' if undo else 'frozen'}")


@mirror.command("list")
@_config_option
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
@click.pass_context
def mirror_list(ctx: click.Context, data: Path | None, as_json: bool) -> None:
    """List declared mirrors."""
    from .. import ops
    from ..app import open_services

    services = open_services(_settings(ctx, data=data))
    rows = ops.list_mirrors(services.catalog)
    if as_json:
        click.echo(json.dumps([ops.mirror_json(m) for m in rows]))
        return
    for m in rows:
        sp = m.spec
        filt = (f" include={','.join(sp.include)}" if sp.include else "") + (
            f" exclude={','.join(sp.exclude)}" if sp.exclude else "")
        click.echo(f"{sp.type.value:8} {sp.repo:40} {','.join(sp.revisions):16} {sp.schedule:12} "
                   f"{('frozen' if sp.frozen else 'enabled' if sp.enabled else 'disabled'):9} {m.source}{filt}")


@cli.command()
@_config_option
@click.argument("repo_id", required=False)
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
@click.pass_context
def status(ctx: click.Context, repo_id: str | None, repo_type: str, data: Path | None, as_json: bool) -> None:
    """Each mirror: mirrored vs upstream commit, last and next sync, last error; with REPO_ID, its sync history."""
    from ..app import open_services
    from ..ops.notify import delivery_summary
    from ..ops.status import repo_status

    services = open_services(_settings(ctx, data=data))
    cat = services.catalog
    out, proxied = repo_status(cat, RepoRef.parse(repo_id, repo_type) if repo_id else None)
    if as_json:
        click.echo(json.dumps(out, default=str))
        return
    if not out:
        click.echo("nothing here yet: no declared mirrors, no hosted or synced repos"
                   + (f" ({proxied} pulled through)" if proxied else "")
                   + ". Declare one with `hubmirror mirror add REPO`, sync one with `hubmirror sync REPO`, "
                     "or host a folder with `hubmirror import REPO FOLDER`.")
        return
    for d in out:
        if not d.get("declared", True):
            flags = f" ({d['kind']}{', private' if d['private'] else ''}, not a declared mirror)"
            if d.get("gone_upstream_since"):
                flags += f" (GONE UPSTREAM since {d['gone_upstream_since']})"
            click.echo(f"{d['repo_type']} {d['repo_id']}{flags}")
            for name, commit in d["refs"].items():
                click.echo(f"  {name.removeprefix('refs/heads/').removeprefix('refs/tags/')}: {commit}")
            _echo_last_run(d)
            _echo_history(d)
            continue
        flags = ("" if d.get("enabled", True) else " (disabled)") + (" (FROZEN)" if d.get("frozen") else "")
        if d.get("gone_upstream_since"):
            flags += f" (GONE UPSTREAM since {d['gone_upstream_since']})"
        click.echo(f"{d['repo_type']} {d['repo_id']}{flags}")
        for ev in d.get("tags_repointed_upstream", []):
            click.echo(f"  TAG RE-POINTED UPSTREAM: {ev['tag']} is {ev['upstream']} upstream; "
                       f"kept at {ev['mirrored']} here (sync --retag to follow)")
        for rev, st in (d.get("state") or {}).items():
            mark = "up to date" if st["up_to_date"] else "UPDATE PENDING"
            click.echo(f"  {rev}: mirrored {st['mirrored'] or '-'}  upstream {st['upstream']}  {mark}")
        if "schedule" in d:
            click.echo(f"  schedule {d['schedule']}; last check {d['last_check'] or '-'}; last sync "
                       f"{d['last_sync'] or '-'}; next sync {d['next_sync'] or '-'}")
        if d.get("last_error"):
            click.echo(f"  last error: {d['last_error']}")
        _echo_last_run(d)
        _echo_history(d)
    if proxied and not repo_id:
        click.echo(f"({proxied} repos pulled through on demand; `hubmirror status REPO` shows one)")
    sent = delivery_summary(cat) if not repo_id else {}
    if sent:
        click.echo("webhooks in the last 24 h: " + ", ".join(f"{n} {k}" for k, n in sorted(sent.items()))
                   + " (hubmirror notify log)")


def _echo_last_run(d: dict[str, Any]) -> None:
    r = d.get("last_run")
    if r and (r["trigger"] != "schedule" or r["status"] == "failed"):  # the schedule's own shows above
        click.echo(f"  last sync attempt {r['started_at']} ({r['trigger']}): {r['status']}"
                   + (f": {r['error']}" if r["error"] else ""))


def _echo_history(d: dict[str, Any]) -> None:
    for h in d.get("hooks", []):  # post-sync hooks first, newest first
        facts = [f"{h['result'] or h['status']}" + ("" if h["exit_code"] in (None, 0) else f" (exit {h['exit_code']})")]
        facts += [f"{h['duration']:.1f} s"] if h["duration"] is not None else []
        facts += [h["finished_at"] or h["started_at"] or ""]
        last = (h["output"] or "").strip().splitlines()[-1:] if h["result"] != "ok" else []
        click.echo(f"  hook {h['hook']}{' (check)' if h['check'] else ''} on {h['revision']} {h['commit'][:12]}: "
                   + ", ".join(f for f in facts if f) + (f": {last[0][:200]}" if last else ""))
    for run in d.get("history", []):
        click.echo(f"  run {run['id']} {run['started_at']:%Y-%m-%d %H:%M:%S} {run['trigger']:8} {run['status']:10} "
                   f"fetched {run['files_fetched']} files/{run['bytes_fetched']} B, reused {run['files_reused']} "
                   f"files/{run['bytes_reused']} B, {run['upstream_calls']} calls"
                   + (f", error: {run['error']}" if run["error"] else ""))
