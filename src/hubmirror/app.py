"""Build the HTTP server from Settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .api.http import error_response, json_response
from .api.hub import HubApi
from .catalog import Catalog
from .config import Settings
from .errors import ConfigError, HubMirrorError
from .api.mirror import MirrorApi
from .reader import LocalReader
from .sync.engine import Syncer
from .sync.service import MirrorService
from .store import LocalBlobStore

log = logging.getLogger("hubmirror")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    store: LocalBlobStore


def open_services(settings: Settings) -> Services:
    """Open catalog and store under the data dir, migrating and sweeping as needed."""
    try:
        settings.data.mkdir(parents=True, exist_ok=True)
        probe = settings.data / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"data directory {str(settings.data)!r} is not writable: {e.strerror}") from None
    catalog = Catalog(settings.catalog_url)
    catalog.migrate()
    store = LocalBlobStore(settings.blob_dir)
    swept = store.sweep()
    if swept:
        log.info("removed %d unfinished blob writes", swept)
    return Services(settings, catalog, store)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hubmirror_http_requests", "HTTP requests", ["method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "hubmirror_http_request_seconds",
            "Time to the response headers",
            ["method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.bytes_served = Counter(
            "hubmirror_served_bytes", "File bytes sent to clients", registry=self.registry
        )


def build_app(services: Services) -> web.Application:
    s = services.settings
    reader = LocalReader(services.catalog, services.store)
    client = s.hub_client()
    syncer = Syncer(services.catalog, services.store, client, s.data, parallel=s.sync_parallel,
                    on_published=reader.forget)
    mirrors = MirrorService(services.catalog, syncer, client, max_concurrent=s.max_concurrent_syncs,
                            tick=s.scheduler_tick, on_change=reader.forget)
    mirrors.load_config(s.mirrors)
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    api = HubApi(reader, public_url=s.public_url, trust_forwarded=s.trust_forwarded_headers,
                 mirror_api=MirrorApi(mirrors, secret))
    metrics = Metrics()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            resp = await handler(request)
        except HubMirrorError as e:
            resp = error_response(e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            resp = json_response({"error": e.reason}, status=e.status, headers={"X-Error-Message": e.reason})
        except Exception:
            log.exception("internal error on %s %s", request.method, request.raw_path[:300])
            resp = json_response({"error": "internal server error"}, status=500)
        metrics.requests.labels(request.method, str(resp.status)).inc()
        metrics.latency.labels(request.method).observe(time.perf_counter() - t0)
        if request.method == "GET" and resp.status in (200, 206) and resp.content_length:
            metrics.bytes_served.inc(resp.content_length)
        return resp

    async def health(request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"})

    async def metrics_view(request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[errors], client_max_size=64 * 1024 * 1024)
    app["services"] = services
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_route("*", r"/{tail:[\s\S]*}", api.dispatch)

    async def start(_app: web.Application) -> None:
        mirrors.start()

    async def close(_app: web.Application) -> None:
        await mirrors.stop()
        await client.close()
        services.catalog.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app
