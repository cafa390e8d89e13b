"""`hubmirror serve`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .base import _config_option, _settings, cli


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

    from ..app import AccessLog, MalformedRequests, build_app, open_services

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
