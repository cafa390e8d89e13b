"""The `hubmirror` command. Parses arguments, loads Settings once, calls the library."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .config import Settings, load_settings
from .errors import HubMirrorError

REPO_TYPES = click.Choice(["model", "dataset", "space"])


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    return load_settings(ctx.obj.get("config"), **overrides)


def _config_option(f: Any) -> Any:
    """`--config FILE` is accepted before or after the subcommand."""

    def set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(dict)["config"] = value

    return click.option("--config", type=click.Path(dir_okay=False), expose_value=False, callback=set_config,
                        is_eager=True, help="TOML config file (also HUBMIRROR_CONFIG).")(f)


def json_failures(f: Any) -> Any:
    """With `--json`, a failure is one JSON object on stdout too (scripts read stdout, not stderr)."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except HubMirrorError as e:
            if not kwargs.get("as_json"):
                raise
            out = {"status": "failed", "error": e.message}
            if kwargs.get("repo_id"):
                out = {"repo_id": kwargs["repo_id"], **out}
            click.echo(json.dumps(out))
            sys.exit(2 if e.status == 400 else 1)

    return run


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubMirrorError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(2 if e.status == 400 else 1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar="HUBMIRROR_CONFIG",
              help="TOML config file (also HUBMIRROR_CONFIG).")
@click.version_option(package_name="hubmirror")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """hubmirror: a self-hosted, verified mirror of the Hugging Face Hub.

    Settings come from defaults, then the --config file, then HUBMIRROR_* environment
    variables, then command-line flags.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@cli.command()
@_config_option
@click.option("--host", help="Address to listen on [default 127.0.0.1; HUBMIRROR_HOST].")
@click.option("--port", type=int, help="Port [default 8090; HUBMIRROR_PORT].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Data directory [default ./hubmirror-data; HUBMIRROR_DATA].")
@click.option("--upstream", help="Upstream Hub URL [default https://huggingface.co; HUBMIRROR_UPSTREAM].")
@click.option("--public-url", help="URL clients use to reach this server, for absolute links.")
@click.option("--offline", is_flag=True, default=None,
              help="Never contact the upstream: serve what is cached (also proxy.offline).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, data: Path | None,
          upstream: str | None, public_url: str | None, offline: bool | None) -> None:
    """Serve the Hub API. Clients set HF_ENDPOINT=http://HOST:PORT."""
    from aiohttp import web

    from .app import AccessLog, MalformedRequests, build_app, open_services

    s = _settings(ctx, host=host, port=port, data=data, upstream=upstream, public_url=public_url)
    if offline:
        s.proxy.offline = True
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    services = open_services(s)
    app = build_app(services)
    click.echo(f"hubmirror serving {s.data.resolve()} on http://{s.host}:{s.port} "
               f"(HF_ENDPOINT=http://{'localhost' if s.host in ('0.0.0.0', '127.0.0.1') else s.host}:{s.port})",
               err=True)
    web.run_app(app, host=s.host, port=s.port, print=None,
                access_log=logging.getLogger("aiohttp.access") if s.access_log else None,
                access_log_class=AccessLog)


@cli.command("import")
@_config_option
@click.argument("repo_id")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--revision", default="main", show_default=True, help="Branch to commit to.")
@click.option("--message", "-m", help="Commit message.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--skip-links", is_flag=True,
              help="Skip symlinks that leave FOLDER, dangle, or point to a directory (a warning names "
                   "each) instead of refusing the import.")
@click.option("--private/--public", "private", default=None,
              help="Make the repo private (readable only by the users and groups an access rule names) or "
                   "public again; unchanged if neither is given.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def import_(ctx: click.Context, repo_id: str, folder: Path, repo_type: str, revision: str,
            message: str | None, data: Path | None, skip_links: bool, private: bool | None, as_json: bool) -> None:
    """Commit FOLDER as a new commit on a branch of REPO_ID (created if needed).

    A symlink is followed only to a file inside FOLDER; any other symlink is refused
    (or skipped with --skip-links).
    """
    from tqdm import tqdm

    from .app import open_services
    from .ingest import import_folder
    from .model.names import RepoRef

    try:
        ref = RepoRef.parse(repo_id, repo_type)
        services = open_services(_settings(ctx, data=data))
        with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"hashing {ref}",
                  disable=as_json or not sys.stderr.isatty()) as bar:
            res = import_folder(services.catalog, services.store, ref, folder, branch=revision, message=message,
                                progress=bar.update, total=lambda n: setattr(bar, "total", n),
                                data_dir=services.settings.data, skip_links=skip_links,
                                warn=lambda m: tqdm.write(f"warning: {m}", file=sys.stderr), private=private)
    except HubMirrorError as e:
        if not as_json:
            raise  # _Group prints "error: ..." and exits
        click.echo(json.dumps({"repo_id": repo_id, "repo_type": repo_type, "revision": revision,
                               "status": "failed", "error": e.message}))
        sys.exit(2 if e.status == 400 else 1)
    if as_json:
        click.echo(json.dumps({"repo_id": ref.repo_id, "repo_type": ref.repo_type.value, "revision": revision,
                               "status": "committed" if res.changed else "up-to-date", "commit": res.commit,
                               "files": res.files, "bytes": res.bytes, "bytes_written": res.bytes_written,
                               "changed": res.changed}))
    elif res.changed:
        click.echo(f"{ref}@{revision}: committed {res.commit} ({res.files} files, {res.bytes} bytes, "
                   f"{res.bytes_written} bytes new)")
    else:
        click.echo(f"{ref}@{revision}: nothing changed, still at {res.commit}")


@cli.command()
@_config_option
@click.argument("repo_id")
@click.argument("tag")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit to tag.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.pass_context
def tag(ctx: click.Context, repo_id: str, tag: str, repo_type: str, revision: str, data: Path | None) -> None:
    """Point tag TAG of REPO_ID at REVISION (a hosted repo's release, say v1.0)."""
    from .app import open_services
    from .errors import RepoNotFound
    from .model.names import RepoRef, validate_branch

    ref = RepoRef.parse(repo_id, repo_type)
    validate_branch(tag)
    services = open_services(_settings(ctx, data=data))
    repo = services.catalog.get_repo(ref)
    if repo is None:
        raise RepoNotFound(f"Repository not found: {ref}")
    commit = services.catalog.resolve(repo, revision)
    services.catalog.set_ref(repo, f"refs/tags/{tag}", commit, reason="tag")
    click.echo(f"{ref}: tag {tag} -> {commit}")


class _TqdmProgress:
    def __init__(self, desc: str, disable: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=disable, total=0)
        self.files = 0
        self.total_files = 0

    def plan(self, files: int, total_bytes: int) -> None:
        self.total_files += files
        self.bar.total = (self.bar.total or 0) + total_bytes
        self.bar.set_postfix_str(f"files {self.files}/{self.total_files}")
        self.bar.refresh()

    def advance(self, nbytes: int) -> None:
        self.bar.update(nbytes)

    def file_done(self, path: str) -> None:
        self.files += 1
        self.bar.set_postfix_str(f"files {self.files}/{self.total_files}")

    def close(self) -> None:
        self.bar.close()


def _mirror_spec(repo_id: str, repo_type: str, revisions: tuple[str, ...], include: tuple[str, ...],
                 exclude: tuple[str, ...], **extra: Any) -> Any:
    from pydantic import ValidationError

    from .errors import InvalidInput
    from .model.mirror import MirrorSpec

    try:
        return MirrorSpec(repo=repo_id, type=repo_type, revisions=list(revisions) or ["main"],
                          include=list(include), exclude=list(exclude), **extra)
    except ValidationError as e:
        raise InvalidInput("; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                                     for err in e.errors())) from None


@cli.command()
@_config_option
@click.argument("repo_id", required=False)
@click.option("--repo-type", type=REPO_TYPES, default=None, help="[default: model, or the declared mirror's]")
@click.option("--revision", "revisions", multiple=True, help="Branch, tag, glob over them (v*) or commit; repeatable.")
@click.option("--include", multiple=True, help="Only files matching this glob; repeatable.")
@click.option("--exclude", multiple=True, help="Skip files matching this glob; repeatable.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--upstream", help="Upstream Hub URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (no progress bars).")
@click.option("--lock", "lock_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Mirror exactly the commits and files a lock file names (REPO_ID is then omitted).")
@click.option("--retag", is_flag=True, help="Follow tags the upstream re-pointed (default: keep ours, flag it).")
@click.option("--allow-gated", is_flag=True,
              help="Mirror a private or gated upstream repo although the mirror serves it to anyone.")
@click.pass_context
@json_failures
def sync(ctx: click.Context, repo_id: str | None, repo_type: str | None, revisions: tuple[str, ...],
         include: tuple[str, ...], exclude: tuple[str, ...], data: Path | None, upstream: str | None,
         as_json: bool, lock_file: Path | None, retag: bool, allow_gated: bool) -> None:
    """Mirror REPO_ID from the upstream: fetch only missing files, verify, switch atomically.

    Without --revision/--include/--exclude, a declared mirror's settings are used.
    Exit 0 when every requested revision is mirrored (synced now or already up to date).
    """
    import asyncio

    from .app import open_services
    from .model.names import RepoRef, RepoType
    from .sync.engine import Syncer

    s = _settings(ctx, data=data, upstream=upstream)
    services = open_services(s)
    if lock_file is not None:
        if repo_id:
            raise HubMirrorError("give either REPO_ID or --lock, not both")
        _sync_lock(s, services, lock_file, as_json, allow_gated)
        return
    if not repo_id:
        raise HubMirrorError("give REPO_ID (or --lock FILE)")
    declared = services.catalog.get_mirror(RepoRef.parse(repo_id, repo_type or "model"))
    if declared is None and repo_type is None:
        declared = next((m for m in services.catalog.list_mirrors() if m.spec.repo == repo_id), None)
    if declared is not None and not (revisions or include or exclude):
        spec = declared.spec
    else:
        spec = _mirror_spec(repo_id, repo_type or (declared.spec.type.value if declared else "model"),
                            revisions, include, exclude)
    if allow_gated:
        spec = spec.model_copy(update={"allow_gated": True})
    progress = _TqdmProgress(f"sync {RepoRef(RepoType(spec.type), spec.repo)}", as_json or not sys.stderr.isatty())

    async def run() -> Any:
        async with s.hub_client() as client:
            syncer = Syncer(services.catalog, services.store, client, s.data, parallel=s.sync_parallel)
            try:
                return await syncer.sync(spec, trigger="cli", progress=progress, retag=retag)
            finally:
                progress.close()

    try:
        result = asyncio.run(run())
    except HubMirrorError as e:
        if as_json:
            click.echo(json.dumps({"repo_id": spec.repo, "repo_type": spec.type.value, "status": "failed",
                                   "error": e.message}))
            sys.exit(1)
        raise
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    for r in result.revisions:
        click.echo(f"{spec.ref}@{r.revision}: {r.commit} ({r.status})")
    click.echo(f"fetched {result.files_fetched} files ({result.bytes_fetched} bytes), reused {result.files_reused} "
               f"files ({result.bytes_reused} bytes), {result.upstream_calls} upstream calls")


def _sync_lock(s: Settings, services: Any, lock_file: Path, as_json: bool, allow_gated: bool) -> None:
    """Mirror exactly what a lock names: each locked commit, only its locked files, checked by sha256."""
    import asyncio

    from .lifecycle import lockfile
    from .model.mirror import MirrorSpec
    from .sync.engine import Syncer

    def literal(path: str) -> str:
        return "".join(f"[{c}]" if c in "*?[" else c for c in path)

    results = []

    async def run() -> None:
        async with s.hub_client() as client:
            syncer = Syncer(services.catalog, services.store, client, s.data, parallel=s.sync_parallel)
            for r in lockfile.load(lock_file):
                # a locked repo with no files: a control character never matches a valid path
                spec = MirrorSpec(repo=r.ref.repo_id, type=r.ref.repo_type, revisions=[r.commit],
                                  include=[literal(f.path) for f in r.files] or ["\x01"], allow_gated=allow_gated)
                res = await syncer.sync(spec, trigger="lock")
                repo = services.catalog.get_repo(r.ref)
                got = {e.path: e for e in services.catalog.list_entries(repo, r.commit, recursive=True, files_only=True)}
                bad = [f.path for f in r.files if f.path not in got or got[f.path].sha256 != f.sha256
                       or got[f.path].size != f.size]
                if bad:
                    raise HubMirrorError(f"{r.ref}@{r.commit}: the upstream's files differ from the lock: {bad[:5]}")
                results.append(res.to_json() | {"commit": r.commit, "revision": r.revision})

    asyncio.run(run())
    if as_json:
        click.echo(json.dumps(results))
    else:
        for res in results:
            click.echo(f"{res['repo_type']} {res['repo_id']}@{res['revision']} = {res['commit']}: {res['status']} "
                       f"(fetched {res['files_fetched']} files, reused {res['files_reused']})")


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
    from .app import open_services

    spec = _mirror_spec(repo_id, repo_type, revisions, include, exclude, schedule=schedule, enabled=not disabled,
                        allow_gated=allow_gated)
    services = open_services(_settings(ctx, data=data))
    existing = services.catalog.get_mirror(spec.ref)
    if existing is not None and existing.source == "config":
        raise HubMirrorError(f"{spec.ref} is declared in the config file; change it there")
    services.catalog.upsert_mirror(spec, "cli")
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
    from .app import open_services
    from .errors import NotFound
    from .model.names import RepoRef

    ref = RepoRef.parse(repo_id, repo_type)
    services = open_services(_settings(ctx, data=data))
    existing = services.catalog.get_mirror(ref)
    if existing is None:
        raise NotFound(f"{ref} is not a declared mirror")
    if existing.source == "config":
        raise HubMirrorError(f"{ref} is declared in the config file; remove it there")
    services.catalog.remove_mirror(ref)
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
    from .app import open_services
    from .errors import NotFound
    from .model.names import RepoRef

    ref = RepoRef.parse(repo_id, repo_type)
    services = open_services(_settings(ctx, data=data))
    m = services.catalog.get_mirror(ref)
    if m is None:
        raise NotFound(f"{ref} is not a declared mirror")
    if m.source == "config":
        raise HubMirrorError(f"{ref} is declared in the config file; set frozen = {str(not undo).lower()} there")
    services.catalog.upsert_mirror(m.spec.model_copy(update={"frozen": not undo}), m.source)
    services.catalog.audit("unfreeze" if undo else "freeze", ref)
    click.echo(f"mirror {ref} {'unfrozen' if undo else 'frozen'}")


@mirror.command("list")
@_config_option
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def mirror_list(ctx: click.Context, data: Path | None, as_json: bool) -> None:
    """List declared mirrors."""
    from .app import open_services

    services = open_services(_settings(ctx, data=data))
    rows = services.catalog.list_mirrors()
    if as_json:
        click.echo(json.dumps([{**m.spec.model_dump(mode="json"), "source": m.source} for m in rows]))
        return
    for m in rows:
        sp = m.spec
        filt = (f" include={','.join(sp.include)}" if sp.include else "") + (
            f" exclude={','.join(sp.exclude)}" if sp.exclude else "")
        click.echo(f"{sp.type.value:8} {sp.repo:40} {','.join(sp.revisions):16} {sp.schedule:12} "
                   f"{'enabled' if sp.enabled else 'disabled':9} {m.source}{filt}")


@cli.command()
@_config_option
@click.argument("repo_id", required=False)
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, repo_id: str | None, repo_type: str, data: Path | None, as_json: bool) -> None:
    """Each mirror: mirrored vs upstream commit, last and next sync, last error; with REPO_ID, its sync history."""
    from .app import open_services
    from .errors import NotFound
    from .model.names import RepoRef
    from .sync.service import describe

    services = open_services(_settings(ctx, data=data))
    cat = services.catalog
    rows = cat.list_mirrors()
    if repo_id:
        ref = RepoRef.parse(repo_id, repo_type)
        rows = [m for m in rows if m.spec.ref == ref]
        if not rows and cat.get_repo(ref) is None:
            raise NotFound(f"{ref} is neither a declared mirror nor a mirrored repo")
    out = []
    gone = cat.gone()
    for m in rows:
        repo = cat.get_repo(m.spec.ref)
        d = describe(m, cat.refs(repo) if repo else {})
        if repo is not None and repo.pk in gone:
            d["gone_upstream_since"] = gone[repo.pk][0].isoformat() + "Z"
        d["tags_repointed_upstream"] = [ev["detail"] for ev in cat.audit_events(m.spec.ref, "tag-repointed-upstream")]
        if repo_id:
            d["history"] = cat.runs(m.spec.ref)
        out.append(d)
    if repo_id and not rows:
        ref = RepoRef.parse(repo_id, repo_type)
        out.append({"repo_id": ref.repo_id, "repo_type": ref.repo_type.value, "declared": False,
                    "history": cat.runs(ref)})
    if as_json:
        click.echo(json.dumps(out, default=str))
        return
    for d in out:
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
        for run in d.get("history", []):
            click.echo(f"  run {run['id']} {run['started_at']:%Y-%m-%d %H:%M:%S} {run['trigger']:8} {run['status']:10} "
                       f"fetched {run['files_fetched']} files/{run['bytes_fetched']} B, reused {run['files_reused']} "
                       f"files/{run['bytes_reused']} B, {run['upstream_calls']} calls"
                       + (f", error: {run['error']}" if run["error"] else ""))


def main() -> None:
    from . import cli_access, cli_history  # noqa: F401  (register their commands)

    cli(obj={})


if __name__ == "__main__":
    # run the commands of the imported module (where cli_history registers), not of __main__
    from hubmirror.cli import main as _main

    _main()
