"""Prometheus metrics: what `GET /metrics` says, and where each number comes from.

Counted where it happens (cheap, in the request path or in a hook):
  * every HTTP answer by route (a bounded set of names, see `route_of`; never a raw path), method
    and status, its body bytes and its time; file GETs served from the store (cache hits) or from
    a fill (misses), by the repo's origin;
  * sync runs by result with their duration; mirror checks by result; requests the gate refused.
Read from running totals other modules keep (plain ints, fed in here before each scrape): the
upstream clients' requests by status (429s included), bytes, retries; the pull-through fills.
Read from the catalog and the store (metrics_facts.py) at most every `catalog_every` and
`store_every` seconds, in a thread, never while a scrape waits (but the very first): per declared
mirror whether it is behind its upstream, failing, when it last succeeded; repos gone upstream;
pins; the pull-through cache (aggregates of the small blob_access table, never of `entries`); the
store's blob count and bytes (a walk of the store: on S3 one LIST request per 1,000 blobs). Free
disk space is asked at each scrape (statvfs).

Several processes (`serve --workers N`) answer on one port and a scrape reaches one of them. The
workers keep their counters and histograms in prometheus_client's multiprocess mode: memory-mapped
files in a directory of their own (TMPDIR/hubmirror-metrics-UID/RUN, RUN naming the supervisor),
summed at each scrape, so that every scrape tells the whole server's numbers and they never go
backwards (a restarted worker's counts stay). The catalog and store gauges are computed by the
worker that answers (every worker sees the same catalog and disk). Replicas on other machines
are separate Prometheus targets; the catalog-derived gauges then appear once per replica (the
alert rules take the max over instances).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..catalog import Catalog
from ..errors import ConfigError
from ..hub import CircuitBreaker, HubClient
from ..serve import FileHit, Reader
from ..serve.stream import Body, FillBody
from ..store import BlobStore, LocalBlobStore
from .http import raw_path
from .metrics_facts import MAX_STREAK, CatalogFacts, Every, read_catalog, read_store

log = logging.getLogger("hubmirror.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CATALOG_EVERY = 10.0  # seconds between reads of the catalog's gauges (mirrors, gone repos, cache)
STORE_EVERY = 3600.0  # seconds between walks of the store (blob count and bytes)
FEED_EVERY = 1.0  # seconds between feeds of this worker's totals into the shared files (--workers N)

# -- routes ---------------------------------------------------------------------------------------

_FIXED = {"/health": "health", "/ready": "ready", "/metrics": "metrics", "/api/whoami-v2": "whoami"}
_API_KINDS = {"revision": "info", "tree": "tree", "paths-info": "paths-info", "refs": "refs", "commits": "commits",
              "xet-read-token": "xet-read-token", "treesize": "treesize", "auth-check": "auth-check"}
_API_AREAS = {"admin": "admin", "hooks": "hooks", "mirror": "mirror"}
ROUTES = frozenset({*_FIXED.values(), *_API_KINDS.values(), *_API_AREAS.values(), "resolve", "api-other", "ui",
                    "other"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def route_of(path: str) -> str:
    """The route of a raw request path as one of `ROUTES`: a label value, never the path."""
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed
    if path.startswith("/api/"):
        segs = path.split("/", 7)[2:]  # after /api/
        if segs[0] in ("models", "datasets", "spaces"):
            for seg in segs[2:4]:  # the keyword follows a repo id of one or two segments
                kind = _API_KINDS.get(seg)
                if kind is not None:
                    return kind
            return "info" if len(segs) <= 3 else "api-other"
        return _API_AREAS.get(segs[0], "api-other")
    if "/resolve/" in path:
        return "resolve"
    if path == "/" or path.startswith("/-/"):
        return "ui"
    return "other"


def method_of(method: str) -> str:
    return method if method in METHODS else "other"


# -- several worker processes -----------------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    """When process `pid` started (Linux: /proc/PID/stat field 22), to tell it from a later one
    with the same pid; None where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_name(pid: int) -> str:
    start = _proc_start(pid)
    return f"{pid}-{start}" if start else str(pid)


def multiprocess_dir(workers: int) -> Path | None:
    """The directory the workers of this server share their counters in (None for one process):
    one per supervisor run, named by the supervisor's pid and start time. Directories of runs
    whose supervisor is gone are removed."""
    if workers <= 1:
        return None
    parent = Path(tempfile.gettempdir()) / f"hubmirror-metrics-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    st = parent.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{parent} must be a directory of this user that no one else may write to "
                          "(it holds the metrics of `serve --workers`)")
    run = _run_name(os.getppid())
    for old in parent.iterdir():
        pid = old.name.split("-", 1)[0]
        if old.name != run and (not pid.isdigit() or not _alive(int(pid)) or _run_name(int(pid)) != old.name):
            shutil.rmtree(old, ignore_errors=True)
    here = parent / run
    here.mkdir(mode=0o700, exist_ok=True)
    return here


def _bury_dead(path: Path) -> None:
    """Drop the live gauges (fills in flight...) of workers that died; their counters stay."""
    for f in path.glob("gauge_live*_*.db"):
        pid = f.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(path))  # type: ignore[no-untyped-call]


# -- the metrics ------------------------------------------------------------------------------------


class _Collect(Collector):
    def __init__(self, fn: Callable[[], Iterator[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[Metric]:
        return self.fn()


class Metrics:
    """The metrics of one server process; `shared`: the directory its sibling workers share
    (`multiprocess_dir`), None when it serves alone."""

    def __init__(self, *, shared: Path | None = None, catalog_every: float = CATALOG_EVERY,
                 store_every: float = STORE_EVERY) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series beside counters
        self.shared = shared
        self.registry = CollectorRegistry()
        if shared is not None:
            # prometheus_client's multiprocess mode: it reads the directory from the environment,
            # and its value class must be switched before the first metric is made
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
            if values.ValueClass is values.MutexValue:
                values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            multiprocess.MultiProcessCollector(self.registry, str(shared))  # type: ignore[no-untyped-call]
        self._own = None if shared is not None else self.registry
        self.catalog_every = catalog_every
        self.store_every = store_every
        self._feeds: list[Callable[[], None]] = []
        self._last: dict[Any, float] = {}
        self._every: list[Every[Any]] = []
        self._task: asyncio.Task[None] | None = None

        self.requests = self._counter("hubmirror_http_requests", "HTTP requests answered, by route, method and status",
                                      ["route", "method", "status"])
        self.latency = Histogram(
            "hubmirror_http_request_seconds",
            "Time to answer: to the end of the body for files, to the headers for other answers",
            ["route", "method"], registry=self._own,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 120, 600),
        )
        self.response_bytes = self._counter("hubmirror_http_response_bytes",
                                            "Body bytes of the answers sent to their end, by route and status",
                                            ["route", "status"])
        self.bytes_served = self._counter("hubmirror_served_bytes", "File bytes sent to clients (resolve GETs)")
        self.cache = self._counter("hubmirror_cache_requests",
                                   "File GETs served from the store (hit) or from a fill (miss), by repo origin",
                                   ["result", "origin"])
        for result in ("hit", "miss"):
            for origin in ("local", "mirror", "proxy"):
                self.cache.labels(result, origin)
        self._children: dict[Any, Any] = {}

    def _counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(name, doc, labels or [], registry=self._own)

    def _gauge(self, name: str, doc: str, mode: str) -> Gauge:
        return Gauge(name, doc, registry=self._own, multiprocess_mode=mode)  # type: ignore[arg-type]

    def _advance(self, child: Any, total: float) -> None:
        """Add to `child` what the running total `total` grew by since the last feed."""
        last = self._last.get(child, 0.0)
        if total > last:
            child.inc(total - last)
        self._last[child] = total

    def feed(self) -> None:
        for fn in self._feeds:
            fn()

    # -- HTTP ------------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts every answer; outermost, so it sees the status the error mapping chose."""
        t0 = time.perf_counter()
        status, nbytes = 500, 0
        try:
            resp = await handler(request)
            status = resp.status
            if request.method != "HEAD":
                n = resp.content_length
                nbytes = n if n is not None else resp.body_length
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self._count(request, status, nbytes, time.perf_counter() - t0)

    def _count(self, request: web.Request, status: int, nbytes: int, seconds: float) -> None:
        route, method = route_of(raw_path(request)), method_of(request.method)
        key = (route, method, status)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = (self.requests.labels(route, method, str(status)),
                                       self.latency.labels(route, method),
                                       self.response_bytes.labels(route, str(status)))
        c[0].inc()
        c[1].observe(seconds)
        if nbytes:
            c[2].inc(nbytes)
            if route == "resolve" and status in (200, 206):
                self.bytes_served.inc(nbytes)

    async def view(self, request: web.Request) -> web.StreamResponse:
        self.feed()
        for e in self._every:
            await e.first()
        if self.shared is not None:
            _bury_dead(self.shared)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        """With sibling workers: feed this one's totals into the shared files every second, so that a
        scrape answered by another worker sees them."""
        if self.shared is not None:
            self._task = asyncio.create_task(self._feeding())

    async def _feeding(self) -> None:
        while True:
            await asyncio.sleep(FEED_EVERY)
            try:
                self.feed()
            except Exception:
                log.exception("could not feed the metrics")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for e in self._every:
            e.cancel()
        if self.shared is not None:
            self.feed()  # the last counts of a worker that stops

    # -- sources ---------------------------------------------------------------------------------

    def cache_reader(self, reader: Reader) -> Reader:
        """`reader`, counting which file GETs its `open_blob` answers from the store or a fill."""
        return cast(Reader, _CountingReader(reader, self.cache))

    def watch_upstream(self, breaker: CircuitBreaker, *clients: HubClient) -> None:
        """The upstream clients' running totals (UpstreamStats) and the circuit breaker."""
        requests = self._counter("hubmirror_upstream_requests",
                                 "Requests sent upstream, by status (error: no answer: refused, reset, timed out)",
                                 ["status"])
        for status in ("200", "429", "error"):
            requests.labels(status)
        nbytes = self._counter("hubmirror_upstream_bytes", "Bytes received from upstream")
        retries = self._counter("hubmirror_upstream_retries", "Upstream retries")
        limited = self._counter("hubmirror_upstream_rate_limited", "429 answers")
        slow = self._counter("hubmirror_upstream_too_slow", "File bodies aborted for falling below upstream_min_rate")
        short = self._counter("hubmirror_upstream_short_circuited",
                              "Requests not sent because the upstream failed recently")
        down = self._gauge("hubmirror_upstream_unreachable",
                           "1 while the circuit breaker holds the upstream as unreachable", "livemax")

        def feed() -> None:
            statuses: dict[str, int] = {}
            for c in clients:
                for k, v in c.stats.by_status.items():
                    statuses[k] = statuses.get(k, 0) + v
            for k, v in statuses.items():
                self._advance(requests.labels(k), v)
            for counter, attr in ((nbytes, "bytes"), (retries, "retries"), (limited, "rate_limited"),
                                  (slow, "too_slow"), (short, "short_circuited")):
                self._advance(counter, sum(getattr(c.stats, attr) for c in clients))
            down.set(1 if breaker.is_open() else 0)

        self._feeds.append(feed)

    def watch_fills(self, filler: Any) -> None:
        """Pull-through fills (proxy.Filler.stats): started by a whole-file GET or by a Range request
        (which downloads the whole file too: a 1-byte Range of an uncached file costs the file),
        bytes, failures, resumes, fills of other processes followed, fills in flight."""
        started = self._counter("hubmirror_fills", "Pull-through fills started, by what asked", ["trigger"])
        nbytes = self._counter("hubmirror_fill_bytes", "Bytes fetched by pull-through fills", ["trigger"])
        failed = self._counter("hubmirror_fills_failed", "Fills that ended without a verified blob")
        orphaned = self._counter("hubmirror_fills_orphaned", "Fills stopped because every client left")
        resumes = self._counter("hubmirror_unverified_resumes",
                                "Resumes onto bytes a failed fill had sent, by outcome", ["result"])
        shared = self._counter("hubmirror_fills_shared", "Blobs another process was filling: followed through its "
                               "spool file (this box) or waited for (another replica)", ["how"])
        in_flight = self._gauge("hubmirror_fills_in_flight", "Fills running now", "livesum")

        def feed() -> None:
            st = filler.stats
            for trig in ("full", "range"):
                self._advance(started.labels(trig), st.started[trig])
                self._advance(nbytes.labels(trig), st.bytes[trig])
            self._advance(failed, st.failed)
            self._advance(orphaned, st.orphaned)
            self._advance(resumes.labels("proven"), st.resumes_proven)
            self._advance(resumes.labels("refused"), st.resumes_refused)
            self._advance(shared.labels("followed"), st.followed)
            self._advance(shared.labels("waited"), st.waited)
            in_flight.set(filler.in_flight)

        self._feeds.append(feed)

    def watch_gate(self, gate: Any) -> None:
        """Requests the gate refused (api/gate.py): denied (address not allowed, bad token) and
        rate-limited (by bucket)."""
        denied = self._counter("hubmirror_requests_denied",
                               "Requests refused before any route: address not allowed (403), invalid or expired "
                               "token (401)", ["reason"])
        limited = self._counter("hubmirror_requests_rate_limited", "Requests refused with 429 by [limits], by bucket",
                                ["bucket"])

        def feed() -> None:
            for reason, n in gate.refused.items():
                self._advance(denied.labels(reason), n)
            for bucket, n in gate.rate_limited.items():
                self._advance(limited.labels(bucket), n)

        feed()
        self._feeds.append(feed)

    def watch_sync(self, syncer: Any, mirrors: Any) -> None:
        """Sync runs (sync/engine.py: `on_finished`) and mirror checks (sync/service.py: `on_checked`)."""
        runs = self._counter("hubmirror_sync_runs", "Sync runs of declared mirrors, by result", ["result"])
        seconds = Histogram("hubmirror_sync_run_seconds", "Duration of sync runs, by result", ["result"],
                            registry=self._own,
                            buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400))
        fetched = self._counter("hubmirror_sync_bytes", "Bytes downloaded by sync runs")
        checks = self._counter("hubmirror_mirror_checks",
                               "Checks of declared mirrors (a sync follows when behind), by result", ["result"])
        for r in ("synced", "up-to-date", "failed"):
            runs.labels(r)
            seconds.labels(r)
        for r in ("synced", "up-to-date", "failed", "busy"):
            checks.labels(r)

        def finished(result: Any, secs: float) -> None:
            runs.labels(result.status).inc()
            seconds.labels(result.status).observe(secs)
            if result.bytes_fetched:
                fetched.inc(result.bytes_fetched)

        def checked(_ref: Any, result: str, _secs: float) -> None:
            checks.labels(result).inc()

        syncer.on_finished = finished
        mirrors.on_checked = checked

    def watch_catalog(self, catalog: Catalog) -> None:
        """Declared mirrors (behind, failing, last check and success, schedule), repos gone upstream,
        repos by origin, pins, the pull-through cache: read every `catalog_every` seconds."""
        seen: dict[tuple[str, str], float] = {}
        facts = Every(self.catalog_every, lambda: read_catalog(catalog, seen), "the catalog")
        self._every.append(facts)

        def collect() -> Iterator[Metric]:
            f = facts.value or CatalogFacts()
            mk = ["repo_type", "repo_id"]
            fams = {
                "behind": GaugeMetricFamily("hubmirror_mirror_behind", "1 if a mirrored branch pointed elsewhere "
                                            "than the upstream's at the last check (until a sync catches up)", labels=mk),
                "failing": GaugeMetricFamily("hubmirror_mirror_failing",
                                             "1 if the last check or sync of the mirror failed", labels=mk),
                "runs": GaugeMetricFamily("hubmirror_mirror_failed_runs",
                                          f"Failed sync runs in a row (up to {MAX_STREAK}; counted while failing)",
                                          labels=mk),
                "check": GaugeMetricFamily("hubmirror_mirror_last_check_timestamp_seconds",
                                           "Unix time of the mirror's last check", labels=mk),
                "success": GaugeMetricFamily("hubmirror_mirror_last_success_timestamp_seconds",
                                             "Unix time the mirror was last known to match its upstream", labels=mk),
                "schedule": GaugeMetricFamily("hubmirror_mirror_schedule_seconds",
                                              "Seconds between two scheduled checks of an active mirror", labels=mk),
            }
            states = {"active": 0, "disabled": 0, "frozen": 0}
            for m in f.mirrors:
                states[m.state] += 1
                lv = [m.repo_type, m.repo_id]
                fams["behind"].add_metric(lv, 1 if m.behind else 0)
                fams["failing"].add_metric(lv, 1 if m.failing else 0)
                fams["runs"].add_metric(lv, m.failed_runs)
                for k, v in (("check", m.last_check), ("success", m.last_success), ("schedule", m.schedule)):
                    if v is not None:
                        fams[k].add_metric(lv, v)
            yield from fams.values()
            by_state = GaugeMetricFamily("hubmirror_mirrors", "Declared mirrors, by state", labels=["state"])
            for k, n in states.items():
                by_state.add_metric([k], n)
            yield by_state
            gone = GaugeMetricFamily("hubmirror_repo_gone_upstream_since_seconds",
                                     "Unix time a mirrored repo was first found gone upstream", labels=mk)
            for repo_type, repo_id, since in f.gone:
                gone.add_metric([repo_type, repo_id], since)
            yield gone
            repos = GaugeMetricFamily("hubmirror_repos", "Repos in the catalog, by origin", labels=["origin"])
            for origin in ("local", "mirror", "proxy"):
                repos.add_metric([origin], f.repos.get(origin, 0))
            yield repos
            yield GaugeMetricFamily("hubmirror_pins", "Pinned commits", value=f.pins)
            yield GaugeMetricFamily("hubmirror_cache_blobs", "Blobs filled by pull-through (evictable)",
                                    value=f.cache_blobs)
            yield GaugeMetricFamily("hubmirror_cache_bytes", "Bytes of the blobs filled by pull-through",
                                    value=f.cache_bytes)

        self.registry.register(_Collect(collect))

    def watch_store(self, store: BlobStore, min_free: int) -> None:
        """Free space (now, at each scrape; none on object storage), the store's blobs and bytes (a
        walk every `store_every` seconds), and proxy.min_free."""
        totals = Every(self.store_every, lambda: read_store(store), "the store")
        self._every.append(totals)

        def collect() -> Iterator[Metric]:
            free = GaugeMetricFamily("hubmirror_store_free_bytes", "Free space for new blobs (local stores)")
            size = GaugeMetricFamily("hubmirror_store_capacity_bytes", "Size of the store's filesystem (local stores)")
            n = store.free_bytes()
            if n is not None:
                free.add_metric([], n)
                if isinstance(store, LocalBlobStore):
                    size.add_metric([], shutil.disk_usage(store.root).total)
            yield free
            yield size
            yield GaugeMetricFamily("hubmirror_store_min_free_bytes",
                                    "Free space pull-through keeps (proxy.min_free): fills are refused below it",
                                    value=min_free)
            blobs = GaugeMetricFamily("hubmirror_store_blobs", "Blobs in the store (counted every "
                                      f"{self.store_every:.0f} s)")
            nbytes = GaugeMetricFamily("hubmirror_store_bytes", "Bytes of the blobs in the store")
            if totals.value is not None:
                blobs.add_metric([], totals.value.blobs)
                nbytes.add_metric([], totals.value.bytes)
            yield blobs
            yield nbytes

        self.registry.register(_Collect(collect))


class _CountingReader:
    """A Reader layer that counts file GETs by where their bytes come from; the rest passes."""

    def __init__(self, inner: Reader, counter: Counter) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def open_blob(self, hit: FileHit, *, head: bool, start: int = 0,
                        alive: Callable[[], bool] | None = None) -> Body:
        body = await self._inner.open_blob(hit, head=head, start=start, alive=alive)
        if not head:
            self._counter.labels("miss" if isinstance(body, FillBody) else "hit", hit.repo.origin).inc()
        return body
