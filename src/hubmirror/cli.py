"""The `hubmirror` command. Parses arguments, loads Settings once, calls the library."""

from __future__ import annotations

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
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, data: Path | None,
          upstream: str | None, public_url: str | None) -> None:
    """Serve the Hub API. Clients set HF_ENDPOINT=http://HOST:PORT."""
    from aiohttp import web

    from .app import build_app, open_services

    s = _settings(ctx, host=host, port=port, data=data, upstream=upstream, public_url=public_url)
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    services = open_services(s)
    app = build_app(services)
    click.echo(f"hubmirror serving {s.data.resolve()} on http://{s.host}:{s.port} "
               f"(HF_ENDPOINT=http://{'localhost' if s.host in ('0.0.0.0', '127.0.0.1') else s.host}:{s.port})",
               err=True)
    web.run_app(app, host=s.host, port=s.port, print=None,
                access_log_format='%a "%r" %s %b %Tfs "%{User-Agent}i"')


@cli.command("import")
@_config_option
@click.argument("repo_id")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-type", type=REPO_TYPES, default="model", show_default=True)
@click.option("--revision", default="main", show_default=True, help="Branch to commit to.")
@click.option("--message", "-m", help="Commit message.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def import_(ctx: click.Context, repo_id: str, folder: Path, repo_type: str, revision: str,
            message: str | None, data: Path | None, as_json: bool) -> None:
    """Commit FOLDER as a new commit on a branch of REPO_ID (created if needed)."""
    from tqdm import tqdm

    from .app import open_services
    from .ingest import import_folder
    from .model.names import RepoRef

    ref = RepoRef.parse(repo_id, repo_type)
    services = open_services(_settings(ctx, data=data))
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"hashing {ref}",
               disable=as_json or not sys.stderr.isatty())
    try:
        res = import_folder(services.catalog, services.store, ref, folder, branch=revision, message=message,
                            progress=bar.update, total=lambda n: setattr(bar, "total", n))
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps({"repo_id": ref.repo_id, "repo_type": ref.repo_type.value, "revision": revision,
                               "commit": res.commit, "files": res.files, "bytes": res.bytes,
                               "bytes_written": res.bytes_written, "changed": res.changed}))
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


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
