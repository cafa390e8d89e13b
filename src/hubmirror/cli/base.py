"""The `hubmirror` group and what every subcommand module shares: settings, the --config option,
JSON failures and error printing."""

from __future__ import annotations

import errno
import functools
import json
import sys
from typing import Any

import click

from ..config import Settings, load_settings
from ..errors import HubMirrorError

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
        except (HubMirrorError, OSError) as e:
            if not kwargs.get("as_json"):
                raise
            message = e.message if isinstance(e, HubMirrorError) else os_message(e)
            out = {"status": "failed", "error": message}
            if kwargs.get("repo_id"):
                out = {"repo_id": kwargs["repo_id"], **out}
            click.echo(json.dumps(out))
            sys.exit(2 if isinstance(e, HubMirrorError) and e.status == 400 else 1)

    return run


def os_message(e: OSError) -> str:
    """One line for a file the user named that cannot be used: what, which file, what to do."""
    what = e.strerror or e.__class__.__name__
    name = f" {e.filename}" if e.filename else ""
    hint = {
        errno.ENOENT: " (does its folder exist?)",
        errno.ENOTDIR: " (a part of that path is a file, not a folder)",
        errno.EACCES: " (permission denied: run as a user who may write there, or choose another place)",
        errno.ENOSPC: " (the disk is full)",
        errno.EISDIR: " (that is a folder; name a file)",
    }.get(e.errno or 0, "")
    return f"{what}:{name}{hint}"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubMirrorError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(2 if e.status == 400 else 1)
        except OSError as e:  # a path given on the command line that cannot be used: one line, no traceback
            click.echo(f"error: {os_message(e)}", err=True)
            sys.exit(1)


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
