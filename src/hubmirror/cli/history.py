"""CLI: versions that never drift and models that outlive their upstream (pin, lock, verify,
gc, export, import-bundle, purge, scrub)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput
from .base import REPO_TYPES, _config_option, _settings, cli

DATA = click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")


def _services(ctx: click.Context, **overrides: Any) -> Any:
    from ..app import open_services

    return open_services(_settings(ctx, **overrides))


def _specs(args: tuple[str, ...], repo_type: str, *, need_rev: bool) -> list[tuple[Any, str | None]]:
    from ..model.names import parse_repo_at_rev

    out = []
    for a in args:
        ref, rev = parse_repo_at_rev(a, repo_type)
        if need_rev and rev is None:
            rev = "main"
        out.append((ref, rev))
    return out


def _bar(desc: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=disable or not sys.stderr.isatty())


@cli.command()
@_config_option
@click.argument("spec", metavar="REPO_ID@REV")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--note", default="", help="Why this commit is pinned.")
@DATA
@click.option("--upstream", help="Upstream to fetch missing files from.")
@click.pass_context
def pin(ctx: click.Context, spec: str, repo_type: str, note: str, data: Path | None, upstream: str | None) -> None:
    """Pin a revision's commit: it is never evicted or garbage-collected, and every file of it
    is fetched now if the store lacks any (so it outlives the upstream)."""
    from .. import ops
    from ..sync.engine import Syncer

    s = _settings(ctx, data=data, upstream=upstream)
    services = _services(ctx, data=data, upstream=upstream)
    ((ref, rev),) = _specs((spec,), repo_type, need_rev=True)
    assert rev is not None
    pinned = ops.pin(services.catalog, ops.Actor.local(), ref, rev, note, store=services.store)
    fetched = 0
    if pinned.missing:  # pinned first, so gc keeps the commit while its files arrive; run again after a failure
        repo = services.catalog.get_repo(ref)
        assert repo is not None

        async def complete() -> int:
            async with s.hub_client() as client:
                return await Syncer(services.catalog, services.store, client, s.data).complete(repo, pinned.commit)

        fetched = asyncio.run(complete())
    click.echo(f"pinned {ref}@{rev} = {pinned.commit}" + (f" (fetched {fetched} missing files)" if fetched else ""))


@cli.command()
@_config_option
@click.argument("spec", metavar="REPO_ID@REV")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@DATA
@click.pass_context
def unpin(ctx: click.Context, spec: str, repo_type: str, data: Path | None) -> None:
    """Remove a pin (the commit stays until retention or gc removes it)."""
    from .. import ops

    services = _services(ctx, data=data)
    ((ref, rev),) = _specs((spec,), repo_type, need_rev=True)
    assert rev is not None
    commit = ops.unpin(services.catalog, ops.Actor.local(), ref, rev)
    click.echo(f"unpinned {ref}@{rev} = {commit}")


@cli.command()
@_config_option
@DATA
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
@click.pass_context
def pins(ctx: click.Context, data: Path | None, as_json: bool) -> None:
    """List pinned commits."""
    from .. import ops

    rows = ops.list_pins(_services(ctx, data=data).catalog)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    for p in rows:
        click.echo(f"{p['repo_type']:8} {p['repo_id']:40} {p['revision']:16} {p['commit']}  {p['note']}")


@cli.command()
@_config_option
@click.argument("specs", nargs=-1, required=True, metavar="REPO_ID@REV...")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True,
              help="Type of ids without a datasets/ or spaces/ prefix.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Lock file to write.")
@DATA
@click.pass_context
def lock(ctx: click.Context, specs: tuple[str, ...], repo_type: str, output: Path, data: Path | None) -> None:
    """Write a TOML lock file: for each repo its type, revision, commit, and every file's path, size and sha256."""
    from ..lifecycle import lockfile

    services = _services(ctx, data=data)
    repos = lockfile.build(services.catalog, [(r, v or "main") for r, v in _specs(specs, repo_type, need_rev=True)])
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(lockfile.dumps(repos))
    tmp.replace(output)
    for r in repos:
        click.echo(f"locked {r.ref}@{r.revision} = {r.commit} ({len(r.files)} files)")


@cli.command()
@_config_option
@click.option("--lock", "lock_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--hf-cache", is_flag=True, help="PATH is a huggingface_hub cache (HF_HUB_CACHE), not one folder.")
@click.option("--repo", "only", help="With a multi-repo lock and a plain folder: which repo the folder holds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
def verify(lock_file: Path, path: Path, hf_cache: bool, only: str | None, as_json: bool) -> None:
    """Check a download (snapshot, local_dir, or an HF cache with --hf-cache) against a lock file.
    Lists missing, modified and extra files; exits 1 on any drift."""
    from ..lifecycle import lockfile

    repos = lockfile.load(lock_file)
    if only:
        repos = [r for r in repos if r.ref.repo_id == only]
        if not repos:
            raise InvalidInput(f"{only} is not in {lock_file}")
    if not hf_cache and len(repos) != 1:
        raise InvalidInput(f"{lock_file} locks {len(repos)} repos: name the folder's with --repo, or use --hf-cache")
    drifts = []
    for r in repos:
        folder = lockfile.hf_cache_snapshot(path, r) if hf_cache else path
        if not folder.is_dir():
            d = lockfile.Drift(str(r.ref), str(folder), missing=[f.path for f in r.files])
        else:
            d = lockfile.verify_folder(r, folder)
        drifts.append(d)
    if as_json:
        click.echo(json.dumps([d.__dict__ | {"clean": d.clean} for d in drifts]))
    else:
        for d in drifts:
            click.echo(f"{d.repo} in {d.folder}: {'OK' if d.clean else 'DRIFT'}")
            for kind in ("missing", "modified", "extra"):
                for p in getattr(d, kind):
                    click.echo(f"  {kind:8} {p}")
    if not all(d.clean for d in drifts):
        sys.exit(1)


@cli.command()
@_config_option
@DATA
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
@click.pass_context
def gc(ctx: click.Context, data: Path | None, dry_run: bool, as_json: bool) -> None:
    """Apply retention (keep_last/keep_tags per mirror, pins, refs) and delete unreferenced blobs.
    Safe while syncs, imports and pull-through fills run."""
    from .. import ops

    s = _settings(ctx, data=data)
    services = _services(ctx, data=data)
    report = ops.run_gc(services.catalog, services.store, s.data, ops.Actor.local(), config_mirrors=s.mirrors,
                        dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report.commits_removed)} commits and {report.blobs_deleted} blobs "
               f"({report.bytes_freed} bytes)")


@cli.command("export")
@_config_option
@click.argument("specs", nargs=-1, required=True, metavar="REPO_ID[@REV]...")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Bundle file (tar) to write.")
@click.option("--hf-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Write a huggingface_hub cache here instead (load it with HF_HUB_OFFLINE=1).")
@DATA
@click.pass_context
def export(ctx: click.Context, specs: tuple[str, ...], repo_type: str, output: Path | None, hf_cache: Path | None,
           data: Path | None) -> None:
    """Export repos (all their refs, or REV) for an air-gapped site: a verified tar bundle, or an HF cache."""
    from ..lifecycle import bundle

    if (output is None) == (hf_cache is None):
        raise InvalidInput("give exactly one of -o FILE (a bundle) or --hf-cache DIR")
    services = _services(ctx, data=data)
    wanted = _specs(specs, repo_type, need_rev=False)
    bar = _bar("export", False)
    try:
        if output is not None:
            r = bundle.export_bundle(services.catalog, services.store, wanted, output, progress=bar.update,
                                     total=lambda n: setattr(bar, "total", n))
            where = str(output)
        else:
            assert hf_cache is not None
            r = bundle.export_hf_cache(services.catalog, services.store, wanted, hf_cache, progress=bar.update)
            where = f"HF cache {hf_cache}"
    finally:
        bar.close()
    click.echo(f"exported {r.repos} repos, {r.commits} commits, {r.blobs} blobs ({r.bytes} bytes) to {where}")


@cli.command("import-bundle")
@_config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@DATA
@click.option("--max-bytes", metavar="SIZE", help="Refuse a bundle whose new blobs add more than SIZE (e.g. 500GiB).")
@click.option("--max-ratio", type=click.FloatRange(min=0), default=100.0, show_default=True, metavar="N",
              help="Refuse a compressed bundle that expands more than N times its size on disk (0: no limit).")
@click.option("--max-manifest", metavar="SIZE", default="32MiB", show_default=True,
              help="Refuse a bundle whose manifest is larger.")
@click.option("--min-free", metavar="SIZE", default="1GiB", show_default=True,
              help="Free space the new blobs must leave in the data directory.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object: the report, or {"status": "failed", "error": ...}.')
@click.pass_context
def import_bundle(ctx: click.Context, file: Path, data: Path | None, max_bytes: str | None, max_ratio: float,
                  max_manifest: str, min_free: str, as_json: bool) -> None:
    """Import a bundle made by `hubmirror export`, all or nothing. The manifest is validated whole and
    the bundle's size bounded before any byte is written; every blob is verified before it is published;
    unsafe members (absolute paths, '..', links, devices) are refused. If anything fails, nothing is
    recorded and no blob is left behind. Exits 2 for a refused bundle, 1 for other failures."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    from ..errors import HubMirrorError
    from ..lifecycle import bundle

    def size(flag: str, value: str) -> int:
        try:
            return int(TypeAdapter(ByteSize).validate_python(value))
        except ValidationError:
            raise InvalidInput(f"invalid {flag} {value!r}: expected a size such as 500GiB") from None

    import signal

    def interrupted(_signum: int, _frame: Any) -> None:
        bundle.INTERRUPTED.set()  # the reader raises it again if this one is lost
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    bar = _bar("import", as_json)
    try:
        byte_limit = None if max_bytes is None else size("--max-bytes", max_bytes)
        manifest_limit, reserve = size("--max-manifest", max_manifest), size("--min-free", min_free)
        s = _settings(ctx, data=data)
        services = _services(ctx, data=data)
        r = bundle.import_bundle(services.catalog, services.store, s.data, file, progress=bar.update,
                                 total=lambda n: setattr(bar, "total", n), max_bytes=byte_limit,
                                 max_ratio=max_ratio, max_manifest=manifest_limit, min_free=reserve)
    except HubMirrorError as e:
        if not as_json:
            raise
        click.echo(json.dumps({"status": "failed", "error": e.message}))
        click.echo(f"error: {e.message}", err=True)
        sys.exit(2 if e.status == 400 else 1)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps({"status": "imported", **r.__dict__}))
    else:
        click.echo(f"imported {r.repos} repos, {r.commits} commits, {r.blobs} blobs ({r.blobs_new} new, {r.bytes} bytes)")


@cli.command()
@_config_option
@click.argument("repo_id")
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--reason", default="", help="Recorded in the audit log.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@DATA
@click.pass_context
def purge(ctx: click.Context, repo_id: str, repo_type: str, reason: str, yes: bool, data: Path | None) -> None:
    """Remove a repo and the blobs no other repo uses, irrecoverably (with an audit-log entry)."""
    from .. import ops
    from ..model.names import RepoRef

    ref = RepoRef.parse(repo_id, repo_type)
    if not yes and not click.confirm(f"Irrecoverably delete {ref} and its files?", default=False):
        raise click.Abort()
    s = _settings(ctx, data=data)
    services = _services(ctx, data=data)
    r = ops.run_purge(services.catalog, services.store, s.data, ops.Actor.local(), ref, reason=reason)
    click.echo(f"purged {r.repo}: {r.commits} commits, {r.blobs_deleted} blobs ({r.bytes_freed} bytes)")


@cli.command()
@_config_option
@DATA
@click.option("--rate", default="64MiB", show_default=True, help="Bytes re-hashed per second (0: unbounded).")
@click.option("--repair/--no-repair", default=True, show_default=True, help="Re-fetch corrupt blobs from the upstream.")
@click.option("--upstream", help="Upstream to re-fetch from.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object or list on stdout; failures too).")
@click.pass_context
def scrub(ctx: click.Context, data: Path | None, rate: str, repair: bool, upstream: str | None, as_json: bool) -> None:
    """Re-hash stored blobs at a bounded rate; remove corrupt ones and re-fetch them when possible.
    Also lists catalog entries whose recorded size disagrees with their stored blob.
    Exits 1 when corruption was found that could not be repaired, or when a size disagrees."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    from ..lifecycle.scrub import scrub as run_scrub

    try:
        bps = float(TypeAdapter(ByteSize).validate_python(rate))
    except ValidationError:
        raise InvalidInput(f"invalid --rate {rate!r}: expected a size such as 64MiB") from None
    s = _settings(ctx, data=data, upstream=upstream)
    services = _services(ctx, data=data, upstream=upstream)

    from tqdm import tqdm

    blobs = list(services.store.list())
    bar = tqdm(total=sum(b.size for b in blobs), unit="B", unit_scale=True, desc=f"scrub {len(blobs)} blobs",
               disable=as_json or not sys.stderr.isatty())

    async def go() -> Any:
        async with s.hub_client() as client:
            return await run_scrub(services.catalog, services.store, s.data, client, rate=bps, repair=repair,
                                   progress=lambda _n, nbytes: bar.update(nbytes))

    try:
        report = asyncio.run(go())
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(f"checked {report.checked} blobs ({report.bytes} bytes): {len(report.corrupt)} corrupt, "
                   f"{len(report.repaired)} repaired")
        for sha, why in report.unrepaired.items():
            click.echo(f"  unrepaired {sha}: {why}")
        for m in report.size_mismatch:
            click.echo(f"  size mismatch {m['sha256']}: the catalog records {m['recorded']} bytes, the stored blob "
                       f"has {m['stored']} (e.g. {m['repo']}@{m['commit']} {m['path']!r})")
    if report.unrepaired or report.size_mismatch:
        sys.exit(1)

