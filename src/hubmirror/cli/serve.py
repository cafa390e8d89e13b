"""`hubmirror serve`."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

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
@click.option("--workers", type=click.IntRange(1, 64),
              help="Server processes sharing the port, 1 to 64; more than 1 adds a supervisor process that "
                   "restarts them [default 1; HUBMIRROR_WORKERS].")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, data: Path | None,
          upstream: str | None, public_url: str | None, offline: bool | None, workers: int | None) -> None:
    """Serve the Hub API. Clients set HF_ENDPOINT=http://HOST:PORT."""
    from aiohttp import web

    from ..app import AccessLog, MalformedRequests, build_app, open_services

    s = _settings(ctx, host=host, port=port, data=data, upstream=upstream, public_url=public_url, workers=workers)
    if offline:
        s.proxy.offline = True
    from ..logs import setup as setup_logging

    setup_logging(s.log_level, s.log_format, pid=s.workers > 1)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    endpoint = "localhost" if s.host in ("0.0.0.0", "127.0.0.1") else s.host
    banner = (f"hubmirror serving {s.data.resolve()} on http://{s.host}:{s.port} with {s.workers} "
              f"worker{'s' if s.workers > 1 else ''} (HF_ENDPOINT=http://{endpoint}:{s.port})")
    if s.proxy.offline:
        banner += "; offline: only what is stored here is served, the upstream is never contacted"
    run: dict[str, Any] = {
        "print": None,
        "access_log": logging.getLogger("aiohttp.access") if s.access_log else None,
        "access_log_class": AccessLog,
    }
    from .workers import StartupHook, listen, supervise

    def announce() -> None:  # a log record when logs are JSON: every line of the log is one object
        if s.log_format == "json":
            logging.getLogger("hubmirror").info(banner)
        else:
            click.echo(banner, err=True)

    if s.workers == 1:
        # bound first: a port in use or an address this machine does not have is one clear line
        # (ConfigError), before anything is opened or announced
        sockets = listen(s.host, s.port, 1)[0]
        services = open_services(s)
        app = build_app(services)
        announce()
        web.run_app(app, sock=sockets, **run)
        return

    def worker(sockets: list[socket.socket], on_startup: StartupHook) -> None:
        # in a forked worker: its own catalog, store, coordinator, event loop
        app = build_app(open_services(s))
        app.on_startup.append(on_startup)
        web.run_app(app, sock=sockets, handle_signals=False, **run)

    supervise(s.host, s.port, s.workers, worker, on_ready=announce)
