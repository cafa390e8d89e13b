"""Build the HTTP server from Settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from . import logs
from .api.admin import AdminApi, is_admin_path
from .api.auth import Authenticator
from .api.gate import Gate
from .api.http import (
    ProxyTrust,
    error_response,
    header_safe,
    json_response,
    raw_path,
    redact,
)
from .api.hub import PRINCIPAL, ROUTE, HubApi
from .api.metrics import Metrics, multiprocess_dir
from .api.mirror import MirrorApi
from .catalog import Catalog
from .config import Settings
from .coord.base import Coordinator
from .coord.limits import Bandwidth
from .coord.local import LocalCoordinator
from .errors import ConfigError, Forbidden, HubMirrorError, Unauthorized
from .events.dispatcher import Dispatcher
from .hub import CircuitBreaker, Shared
from .proxy import Filler, Rules
from .proxy.journal import recover_crashed_fills
from .serve import LocalReader, PullThrough, Reader
from .serve.policy import Policy
from .serve.stream import SENT_DIRECT
from .store import BlobStore, open_store
from .sync.check import UpdateChecker
from .sync.engine import Syncer
from .sync.service import MirrorService
from .ui import mount_ui

log = logging.getLogger("hubmirror")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    store: BlobStore
    coord: Coordinator


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
    store = open_store(settings)
    recovered = recover_crashed_fills(catalog, store)
    if recovered:
        log.info("recorded what %d pull-through fills of a stopped process had written", recovered)
    swept = store.sweep()
    if swept:
        log.info("removed %d unfinished blob writes", swept)
    return Services(settings, catalog, store, open_coordinator(settings, catalog))


def open_coordinator(settings: Settings, catalog: Catalog) -> Coordinator:
    """flock in the data dir on one box; PostgreSQL advisory locks and leases when the catalog is
    there (several replicas share it)."""
    if catalog.engine.dialect.name == "postgresql":
        from .coord.sql import SqlCoordinator

        return SqlCoordinator(catalog.engine.url.render_as_string(hide_password=False))
    return LocalCoordinator(settings.data, max_keys=settings.limits.max_keys)


class AccessLog(AbstractAccessLogger):
    """One line per request: client, request line, status, bytes, seconds, user agent.

    Hand-written instead of aiohttp's format-string logger, which costs a third of the HEAD rate.
    The client is the peer, or behind `trusted_proxies` the address they forward. Long request
    lines and user agents are cut, so that one request cannot write kilobytes of log."""

    trust = ProxyTrust([])

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path = request.raw_path
        if "token=" in path or "TOKEN=" in path or "Token=" in path:
            path = redact(path)
        ua = request.headers.get("User-Agent", "-")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %s %.6fs "%s"',
            self.trust.client_address(request), request.method[:20], _printable(path[:500]),
            request.version.major, request.version.minor, response.status,
            response.body_length + request.get(SENT_DIRECT, 0), time,
            _printable(ua[:200]), extra={"request_id": request.get(logs.REQUEST_ID_KEY)},
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _printable(text: str) -> str:
    """As is when it is plain ASCII (nearly always: cheap), else escaped: one log line per request."""
    return text if text.isascii() and text.isprintable() else header_safe(text)


class MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse at ERROR with a traceback: an anonymous client
    could fill the disk with them. They are the client's fault; one summary line a minute instead."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self.count = 0
        self._last = 0.0
        self._since = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or exc.code >= 500:
            return True
        self.count += 1
        self._since += 1
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "%d malformed requests refused with 400 since the last such line (latest: %s)"
        record.args = (self._since, header_safe(str(exc.message)[:200]))
        record.exc_info = None
        record.exc_text = None
        self._last, self._since = now, 0
        return True


async def _every(seconds: float, fn: Callable[[], Awaitable[None]], what: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except HubMirrorError as e:  # e.g. a full disk: dropped, serving goes on
            log.warning("could not record %s: %s", what, e.message)
        except Exception:
            log.exception("could not record %s", what)


def build_app(services: Services) -> web.Application:
    s = services.settings
    # one pair of caps (metadata calls, file bodies) and one circuit breaker for the whole server
    shared = s.upstream_shared()
    shared.breaker = CircuitBreaker(cooldown=s.proxy.breaker_cooldown)
    # syncs download on slots of their own: a long sync never makes a client's cache miss wait
    bulk = Shared(shared.api_slots, asyncio.Semaphore(s.upstream_max_concurrency), shared.breaker)
    client = s.hub_client(shared=bulk)
    proxy: PullThrough | None = None
    local = LocalReader(services.catalog, services.store, redirect=s.store_redirect)
    reader: Reader = local
    proxy_client = s.hub_client(fail_fast=True, shared=shared)
    rules = Rules(s.proxy.allow, s.proxy.deny)
    filler: Filler | None = None
    if s.proxy.enabled:
        filler = Filler(services.store, services.catalog, proxy_client, coord=services.coord, min_free=int(s.proxy.min_free),
                        max_bytes=int(s.proxy.max_bytes) if s.proxy.max_bytes is not None else None,
                        orphan_grace=s.proxy.orphan_grace, resume_guard=s.proxy.resume_guard, lease_ttl=s.lease_ttl)
        proxy = reader = PullThrough(
            local, proxy_client, filler,
            rules=rules, cache_rules=Rules(s.proxy.cache_allow, s.proxy.cache_deny),
            offline=s.proxy.offline, branch_ttl=s.proxy.branch_ttl, negative_ttl=s.proxy.negative_ttl,
            allow_gated=s.proxy.allow_gated,
        )
        filler.on_filled = proxy.note_filled
    syncer = Syncer(services.catalog, services.store, client, services.coord, parallel=s.sync_parallel,
                    on_published=reader.forget)
    mirrors = MirrorService(services.catalog, syncer, client, max_concurrent=s.max_concurrent_syncs,
                            tick=s.scheduler_tick, on_change=reader.forget, coord=services.coord,
                            lease_ttl=s.lease_ttl)
    mirrors.load_config(s.mirrors)
    checker = UpdateChecker(services.catalog, proxy_client, allows=rules.allows if s.proxy.enabled else None,
                            offline=s.proxy.offline, allow_gated=s.proxy.allow_gated, ttl=s.proxy.branch_ttl,
                            negative_ttl=s.proxy.negative_ttl)
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    trust = ProxyTrust(s.trusted_proxies)
    AccessLog.trust = trust
    policy = Policy.from_settings(s.access)
    auth = Authenticator(services.catalog, trust)
    gate = Gate(s.access, s.limits, auth, services.coord.counters, Bandwidth())
    admin = AdminApi(services.catalog, services.store, s.data, auth=auth, admin_address=gate.admin_address,
                     mirrors=mirrors, syncer=syncer, config_mirrors=s.mirrors)
    metrics = Metrics(shared=multiprocess_dir(s.workers))  # api/metrics.py: what /metrics says
    metrics.watch_upstream(shared.breaker, client, proxy_client)
    metrics.watch_catalog(services.catalog)
    metrics.watch_store(services.store, int(s.proxy.min_free))
    metrics.watch_gate(gate)
    metrics.watch_sync(syncer, mirrors)
    events = Dispatcher.from_settings(s, services.catalog, services.store)  # [[notify]], [[hooks]], disk-low
    if filler is not None:
        metrics.watch_fills(filler)
    api = HubApi(metrics.cache_reader(reader), local, policy, public_url=s.public_url, trust=trust,
                 mirror_api=MirrorApi(mirrors, checker, secret), admin_api=admin)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except HubMirrorError as e:
            who = request.get(PRINCIPAL)
            route = request.get(ROUTE)
            where = logs.context(route.repo, route.revision, route.path) if route is not None else {}
            log.log(logging.WARNING if e.status >= 500 else logging.INFO, "%s %s: %s %s", request.method,
                    redact(request.raw_path[:300]), e.status, e.message, extra=where)
            resp = error_response(e, anonymous=who is None or who.anonymous)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            resp = json_response({"error": e.reason}, status=e.status, headers={"X-Error-Message": e.reason})
        except ConnectionError:
            t = request.transport
            if t is not None and not t.is_closing():
                raise
            # the client went away (mid-body or mid-answer): nothing to tell it, nothing to log
            resp = web.Response(status=499)
        except Exception:
            route = request.get(ROUTE)
            log.exception("internal error on %s %s", request.method, redact(request.raw_path[:300]),
                          extra=logs.context(route.repo, route.revision, route.path) if route is not None else {})
            resp = json_response({"error": "internal server error"}, status=500)
        return resp

    async def health(request: web.Request) -> web.StreamResponse:
        """Liveness: the process answers."""
        return json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.StreamResponse:
        """Readiness: the catalog and the store answer (a load balancer sends no traffic until then)."""
        problems = []
        try:
            await asyncio.wait_for(asyncio.to_thread(services.catalog.ping), 5)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            problems.append(f"catalog: {e.__class__.__name__}")
        try:
            await asyncio.wait_for(asyncio.to_thread(services.store.stat, "0" * 64), 5)
        except Exception as e:  # noqa: BLE001
            problems.append(f"store: {e.__class__.__name__}")
        if problems:
            return json_response({"status": "unavailable", "problems": problems}, status=503)
        return json_response({"status": "ready"})

    @web.middleware
    async def gatekeeper(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            who = await gate.admit(request)  # 403 (address), 401 (token), 429 (limits)
        except (Unauthorized, Forbidden) as e:
            if is_admin_path(raw_path(request)):
                await admin.refused(request, None, e.message)  # a denied admin call is audited
            raise
        if who is not None:
            request[PRINCIPAL] = who
        return await handler(request)

    app = web.Application(middlewares=[logs.middleware, metrics.middleware, errors, gatekeeper],
                          client_max_size=64 * 1024 * 1024)
    logs.install(app)  # X-Request-Id on every answer
    app["services"] = services
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics.view)
    mount_ui(app, api, admin, services, breaker=shared.breaker, filler=filler, metrics=metrics)  # / and /-/
    app.router.add_route("*", r"/{tail:[\s\S]*}", api.dispatch)

    background: list[asyncio.Task[None]] = []

    async def start(_app: web.Application) -> None:
        if filler is not None:
            await filler.start()
        mirrors.start()
        await events.start()
        await metrics.start()
        if proxy is not None:
            background.append(asyncio.create_task(proxy.run_flusher()))
        background.append(asyncio.create_task(_every(30.0, auth.flush_usage, "token usage")))

    async def close(_app: web.Application) -> None:
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await admin.close()
        await mirrors.stop()
        await events.stop()
        if proxy is not None:
            await proxy.filler.close()
            await proxy.flush_access()
        await metrics.close()
        await client.close()
        await proxy_client.close()
        services.catalog.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app
