"""Repos in and out of the mirror: `import`, `tag`, `sync`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..errors import HubMirrorError
from .base import REPO_TYPES, _config_option, _settings, cli, json_failures


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

    from ..app import open_services
    from ..ingest import import_folder
    from ..model.names import RepoRef

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
    from ..app import open_services
    from ..errors import RepoNotFound
    from ..model.names import RepoRef, validate_branch

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

    from ..errors import InvalidInput
    from ..model.mirror import MirrorSpec

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

    from ..app import open_services
    from ..model.names import RepoRef, RepoType
    from ..sync.engine import Syncer

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
                return await syncer.sync(spec, trigger="cli", progress=progress, retag=retag, actor=_cli_actor())
            finally:
                progress.close()

    try:
        result = asyncio.run(run())
    except HubMirrorError as e:
        from ..errors import UpstreamUnavailable
        from ..sync.engine import SyncResult

        message = e.message
        if isinstance(e, UpstreamUnavailable) and "unreachable" in message:
            # the operator's own setting: naming the host is fine here (never in a client's answer)
            message += (f". Cannot reach the upstream {s.upstream}: point --upstream (or HUBMIRROR_UPSTREAM) at a "
                        f"reachable Hub or hubmirror, or serve what is stored with `hubmirror serve --offline`")
        if as_json:
            failed = getattr(e, "sync_result", None) or SyncResult(RepoRef(RepoType(spec.type), spec.repo))
            out = failed.to_json()
            out.update(status="failed", error=message)
            click.echo(json.dumps(out))
            sys.exit(1)
        raise HubMirrorError(message) from None
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

    from ..lifecycle import lockfile
    from ..model.mirror import MirrorSpec
    from ..sync.engine import Syncer

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
                res = await syncer.sync(spec, trigger="lock", actor=_cli_actor())
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


def _cli_actor() -> str:
    from ..ops import Actor

    return Actor.local().name
