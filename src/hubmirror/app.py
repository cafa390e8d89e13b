"""Build the HTTP server from Settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timezone

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
from .api.mirror import MirrorApi
from . import logs
from .catalog import Catalog
from .config import Settings
from .coord.base import Coordinator
from .coord.limits import Bandwidth
from .coord.local import LocalCoordinator
from .errors import ConfigError, Forbidden, HubMirrorError, Unauthorized
from .hub import CircuitBreaker, HubClient, Shared
from .proxy import Filler, Rules
from .proxy.journal import recover_crashed_fills
from .serve import LocalReader, PullThrough, Reader
from .serve.policy import Policy
from .serve.stream import SENT_DIRECT
from .store import BlobStore, open_store
from .sync.check import UpdateChecker
from .sync.engine import Syncer
from .sync.service import MirrorService

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
            response.body_length + response.get(SENT_DIRECT, 0), time,
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

    def watch_catalog(self, catalog: Catalog) -> None:
        """Repos gone upstream (with the time they were found gone) and pins, read at scrape time."""

        class _Catalog(Collector):
            def collect(self) -> Iterator[Metric]:
                gone = GaugeMetricFamily("hubmirror_repo_gone_upstream_since_seconds",
                                         "Unix time a mirrored repo was first found gone upstream",
                                         labels=["repo_type", "repo_id"])
                repos = {r.pk: r.ref for r in catalog.list_repos()}
                for pk, (since, _msg) in catalog.gone().items():
                    if pk in repos:
                        gone.add_metric([repos[pk].repo_type.value, repos[pk].repo_id],
                                        since.replace(tzinfo=timezone.utc).timestamp())
                yield gone
                yield GaugeMetricFamily("hubmirror_pins", "Pinned commits", value=len(catalog.pins()))

        self.registry.register(_Catalog())

    def watch_upstream(self, breaker: CircuitBreaker, *clients: HubClient) -> None:
        """Expose the upstream clients' counters (requests, bytes, retries, 429s) and the breaker."""

        class _Upstream(Collector):
            def collect(self) -> Iterator[Metric]:
                def total(attr: str) -> int:
                    return sum(getattr(c.stats, attr) for c in clients)

                yield CounterMetricFamily("hubmirror_upstream_requests", "Requests sent upstream", value=total("calls"))
                yield CounterMetricFamily("hubmirror_upstream_bytes", "Bytes received from upstream",
                                          value=total("bytes"))
                yield CounterMetricFamily("hubmirror_upstream_retries", "Upstream retries", value=total("retries"))
                yield CounterMetricFamily("hubmirror_upstream_rate_limited", "429 answers", value=total("rate_limited"))
                yield CounterMetricFamily("hubmirror_upstream_too_slow",
                                          "File bodies aborted for falling below upstream_min_rate",
                                          value=total("too_slow"))
                yield CounterMetricFamily("hubmirror_upstream_short_circuited",
                                          "Requests not sent because the upstream failed recently",
                                          value=total("short_circuited"))
                yield GaugeMetricFamily("hubmirror_upstream_unreachable",
                                        "1 while the circuit breaker holds the upstream as unreachable",
                                        value=1 if breaker.is_open() else 0)

        self.registry.register(_Upstream())

    def watch_fills(self, filler: Filler) -> None:
        """Pull-through fills: started by a whole-file GET or by a Range request (which downloads the
        whole file too: a 1-byte Range of an uncached file costs the file), bytes, failures."""

        class _Fills(Collector):
            def collect(self) -> Iterator[Metric]:
                st = filler.stats
                started = CounterMetricFamily("hubmirror_fills", "Pull-through fills started, by what asked",
                                              labels=["trigger"])
                nbytes = CounterMetricFamily("hubmirror_fill_bytes", "Bytes fetched by pull-through fills",
                                             labels=["trigger"])
                for trig in ("full", "range"):
                    started.add_metric([trig], st.started[trig])
                    nbytes.add_metric([trig], st.bytes[trig])
                yield started
                yield nbytes
                yield CounterMetricFamily("hubmirror_fills_failed", "Fills that ended without a verified blob",
                                          value=st.failed)
                yield CounterMetricFamily("hubmirror_fills_orphaned", "Fills stopped because every client left",
                                          value=st.orphaned)
                resumes = CounterMetricFamily("hubmirror_unverified_resumes",
                                              "Resumes onto bytes a failed fill had sent, by outcome",
                                              labels=["result"])
                resumes.add_metric(["proven"], st.resumes_proven)
                resumes.add_metric(["refused"], st.resumes_refused)
                yield resumes
                shared = CounterMetricFamily("hubmirror_fills_shared",
                                             "Blobs another process was filling: followed through its spool "
                                             "file (this box) or waited for (another replica)", labels=["how"])
                shared.add_metric(["followed"], st.followed)
                shared.add_metric(["waited"], st.waited)
                yield shared
                yield GaugeMetricFamily("hubmirror_fills_in_flight", "Fills running now", value=filler.in_flight)

        self.registry.register(_Fills())


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
    api = HubApi(reader, local, policy, public_url=s.public_url, trust=trust,
                 mirror_api=MirrorApi(mirrors, checker, secret), admin_api=admin)
    metrics = Metrics()
    metrics.watch_upstream(shared.breaker, client, proxy_client)
    metrics.watch_catalog(services.catalog)
    if filler is not None:
        metrics.watch_fills(filler)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
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
        metrics.requests.labels(request.method, str(resp.status)).inc()
        metrics.latency.labels(request.method).observe(time.perf_counter() - t0)
        if request.method == "GET" and resp.status in (200, 206) and resp.content_length:
            metrics.bytes_served.inc(resp.content_length)
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

    async def metrics_view(request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

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

    app = web.Application(middlewares=[logs.middleware, errors, gatekeeper], client_max_size=64 * 1024 * 1024)
    logs.install(app)  # X-Request-Id on every answer
    app["services"] = services
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_route("*", r"/{tail:[\s\S]*}", api.dispatch)

    background: list[asyncio.Task[None]] = []

    async def start(_app: web.Application) -> None:
        if filler is not None:
            await filler.start()
        mirrors.start()
        if proxy is not None:
            background.append(asyncio.create_task(proxy.run_flusher()))
        background.append(asyncio.create_task(_every(30.0, auth.flush_usage, "token usage")))

    async def close(_app: web.Application) -> None:
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await admin.close()
        await mirrors.stop()
        if proxy is not None:
            await proxy.filler.close()
            await proxy.flush_access()
        await client.close()
        await proxy_client.close()
        services.catalog.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app
