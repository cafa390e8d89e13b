"""/metrics as an operator and their Prometheus see it: a real hubmirror pulling through from the
fake Hub (a cold miss, a hit, a 429 from the upstream, a denied and a rate-limited request, a
mirror whose sync fails), scraped by a real Prometheus that loads deploy/prometheus/alerts.yml,
plus `promtool check/test rules` and the Grafana dashboard's queries run against that Prometheus.

Tools (a missing one fails these tests, it does not skip them): Debian `prometheus`, which ships
`prometheus` and `promtool` (`apt-get install -y --no-install-recommends prometheus`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from backends import current as backend
from fakes.hub import FakeHub
from helpers import Server, free_port, raw, wait_http
from prometheus_client.parser import text_string_to_metric_families

from hubmirror.api.metrics import ROUTES, route_of

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "hubmirror.json"
INSTALL = "apt-get install -y --no-install-recommends prometheus"
METRIC = re.compile(r"\bhubmirror_[a-z0-9_]+")

pytestmark = pytest.mark.timeout(180)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed ({INSTALL})", pytrace=False)
    return found


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[Samples, set[str]]:
    """The samples of /metrics (parsed as Prometheus would) and every name a query may use."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    samples: Samples = {}
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(fam.type, [])
        names.update(fam.name + s for s in suffixes)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(url: str, check: Any, what: str, timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen on /metrics within {timeout:.0f}s")
        time.sleep(0.3)


class Prometheus:
    """A real Prometheus on a free port, scraping `target` every second, with `rules` loaded."""

    def __init__(self, tmp: Path, target: str, rules: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "hubmirror", "static_configs": [{"targets": [target]}]}],
        }
        cfg = tmp / "prometheus.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        self.log = tmp / "prometheus.log"
        self._fh = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._fh, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + "/-/ready", proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise AssertionError(self.log.read_text()) from None

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def until(self, fn: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = fn()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} within {timeout:.0f}s\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=4).start()
    yield h
    h.stop()


def _quick_alerts(tmp: Path, *names: str) -> Path:
    """alerts.yml with the `for` of `names` cut to 0s, so that they fire within the test."""
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in names:
                rule["for"] = "0s"
    out = tmp / "alerts.yml"
    out.write_text(yaml.safe_dump(rules))
    return out


@pytest.mark.e2e
def test_metrics_scraped_by_prometheus_and_alerts_fire(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/cached", {"config.json": b"{}", "w.bin": os.urandom(50_000)})
    hub.commit("acme/limited", {"config.json": b"{}"})
    hub.commit("acme/broken", {"config.json": b"{}", "w.bin": os.urandom(1000)})
    hub.fault("status", "/acme/broken/resolve/*", times=1000, status=500)  # its sync fails
    s = Server(tmp_path / "d", "--upstream", hub.url, env={
        "HUBMIRROR_UPSTREAM_BACKOFF": "0.01",
        "HUBMIRROR_SCHEDULER_TICK": "0.5",
        "HUBMIRROR_MIRRORS": json.dumps([{"repo": "acme/broken", "schedule": "1h"}]),
        "HUBMIRROR_LIMITS__API": "2/1h",
    })
    prom: Prometheus | None = None
    try:
        # traffic: a cold miss and a hit, a HEAD (neither), an invalid token (denied), the API
        # limit (2 per hour) exceeded; all before the first scrape, which walks the store (and
        # then not again for an hour)
        path = "/acme/cached/resolve/main/w.bin"
        assert raw(s.url, "GET", path).status == 200
        assert raw(s.url, "GET", path).status == 200
        assert raw(s.url, "HEAD", path).status == 200
        assert raw(s.url, "GET", "/api/models/acme/cached", {"Authorization": "Bearer hm_" + "x" * 40}).status == 401
        assert [raw(s.url, "GET", "/api/models/acme/cached").status for _ in range(3)] == [200, 200, 429]

        rules = _quick_alerts(tmp_path, "HubmirrorUpstreamRateLimited", "HubmirrorMirrorFailing")
        prom = Prometheus(tmp_path / "prom", f"127.0.0.1:{s.port}", rules)
        # Prometheus has the 429 counter at 0 before the upstream answers 429: rate() sees it grow
        prom.until(lambda: prom.api("query", query='hubmirror_upstream_requests_total{status="429"}')["result"],
                   "first scrape")
        # last, as it opens the circuit breaker: the upstream answers 429
        hub.fault("status", "*acme/limited*", times=100, status=429)
        assert raw(s.url, "GET", "/acme/limited/resolve/main/config.json").status != 200  # (the client is not told why)

        # the catalog is read again every 10 s at most: wait for a read after the sync failed
        m = wait_for(s.url, lambda m: value(m, "hubmirror_mirror_failing", repo_type="model", repo_id="acme/broken"),
                     "the failed sync of acme/broken", timeout=40)

        def v(name: str, **labels: str) -> Any:
            return value(m, name, **labels)

        assert v("hubmirror_http_requests_total", route="resolve", method="GET", status="200") == 2
        assert v("hubmirror_http_requests_total", route="resolve", method="HEAD", status="200") == 1
        assert v("hubmirror_http_requests_total", route="info", method="GET", status="429") == 1
        assert v("hubmirror_http_response_bytes_total", route="resolve", status="200") == 100_000
        assert v("hubmirror_served_bytes_total") == 100_000
        assert v("hubmirror_http_request_seconds_count", route="resolve", method="GET") == 3  # with acme/limited
        assert v("hubmirror_cache_requests_total", result="miss", origin="proxy") == 1
        assert v("hubmirror_cache_requests_total", result="hit", origin="proxy") == 1
        assert v("hubmirror_fills_total", trigger="full") == 1
        assert v("hubmirror_fill_bytes_total", trigger="full") == 50_000
        assert v("hubmirror_fills_in_flight") == 0
        assert v("hubmirror_upstream_requests_total", status="429") == 2  # the request and its one retry
        assert v("hubmirror_upstream_rate_limited_total") == 2
        assert v("hubmirror_upstream_requests_total", status="500") >= 6  # the broken mirror's file
        assert v("hubmirror_upstream_unreachable") == 1  # the 429 opened the circuit breaker
        assert v("hubmirror_requests_denied_total", reason="token") == 1
        assert v("hubmirror_requests_rate_limited_total", bucket="api") == 1
        assert v("hubmirror_sync_runs_total", result="failed") == 1
        assert v("hubmirror_sync_run_seconds_count", result="failed") == 1
        assert v("hubmirror_mirror_checks_total", result="failed") == 1
        mirror = {"repo_type": "model", "repo_id": "acme/broken"}
        assert v("hubmirror_mirror_failing", **mirror) == 1
        assert v("hubmirror_mirror_behind", **mirror) == 1  # the upstream has a commit it lacks
        assert v("hubmirror_mirror_failed_runs", **mirror) == 1
        assert v("hubmirror_mirror_schedule_seconds", **mirror) == 3600
        assert abs(v("hubmirror_mirror_last_check_timestamp_seconds", **mirror) - time.time()) < 120
        assert v("hubmirror_mirror_last_success_timestamp_seconds", **mirror) is None  # never succeeded
        assert v("hubmirror_mirrors", state="active") == 1
        assert v("hubmirror_repos", origin="proxy") == 1  # acme/cached
        assert v("hubmirror_cache_blobs") == 1 and v("hubmirror_cache_bytes") == 50_000
        stored = list(backend().store(tmp_path / "d").list())  # w.bin, and what the failed sync kept
        assert v("hubmirror_store_blobs") == len(stored) >= 1
        assert v("hubmirror_store_bytes") == sum(b.size for b in stored) >= 50_000
        if backend().name == "local":
            assert 0 < v("hubmirror_store_free_bytes") <= v("hubmirror_store_capacity_bytes")
        else:  # object storage has no free space to tell
            assert v("hubmirror_store_free_bytes") is None
        assert v("hubmirror_store_min_free_bytes") == 1 << 30
        # labels name routes, never paths
        for (name, labels) in m:
            for k, val in labels:
                assert "acme/" not in val or k == "repo_id", (name, labels)
                assert k != "route" or val in ROUTES, (name, labels)

        # Prometheus: the target is up, the series are there, the two alerts fire
        prom.until(lambda: [t for t in prom.api("targets")["activeTargets"] if t["health"] == "up"], "target up")
        got = prom.api("query", query='sum(hubmirror_cache_requests_total{result="hit"})')["result"]
        assert got and float(got[0]["value"][1]) == 1

        def firing() -> set[str]:
            return {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"}

        prom.until(lambda: {"HubmirrorUpstreamRateLimited", "HubmirrorMirrorFailing"} <= firing(),
                   "the 429 and the failing-mirror alerts firing")
        assert "HubmirrorDiskNearlyFull" not in firing()

        # every metric the dashboard and the alerts name exists, and every dashboard query runs
        _, names = scrape(s.url)
        dash = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        assert len(exprs) > 20
        alerts = [r["expr"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
        referenced = set(METRIC.findall(" ".join(exprs + alerts)))
        assert referenced and not referenced - names, sorted(referenced - names)
        for e in exprs:
            q = e.replace("$instance", ".*").replace("$__rate_interval", "1m")
            prom.api("query", query=q)  # status "success": it parses and evaluates
    finally:
        if prom is not None:
            prom.stop()
        s.stop()


@pytest.mark.e2e
def test_workers_add_up_their_counts(tmp_path: Path) -> None:
    """With --workers 2, whichever worker answers a scrape tells the whole server's counts, and a
    worker that dies keeps its counts in them."""
    s = Server(tmp_path / "d", "--offline", "--workers", "2")
    try:
        health = {"route": "health", "method": "GET", "status": "200"}
        m, _names = scrape(s.url)
        before = value(m, "hubmirror_http_requests_total", **health) or 0  # the helper's readiness probe
        for _ in range(40):
            assert raw(s.url, "GET", "/health").status == 200
        answered = {int(p) for p in re.findall(r"\[(\d+)\][^\n]*GET /health", s.log.read_text())}
        seen = set()
        for _ in range(8):
            m, _names = scrape(s.url)
            seen.add(value(m, "hubmirror_http_requests_total", **health))
        assert seen == {before + 40}, (seen, answered)
        if len(answered) == 2:  # (the kernel may hand all 40 connections to one worker; it rarely does)
            os.kill(min(answered), signal.SIGKILL)
            time.sleep(1.0)
        m, _names = scrape(s.url)
        assert value(m, "hubmirror_http_requests_total", **health) == before + 40
    finally:
        s.stop()


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool")
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        p = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, f"promtool {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    assert "SUCCESS: 10 rules found" in subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=PROM, capture_output=True, text=True, check=False).stdout


def test_the_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "hubmirror" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert METRIC.search(t["expr"]), t
            assert t["expr"].count("(") == t["expr"].count(")"), t


@pytest.mark.parametrize("path,route", [
    ("/acme/tiny/resolve/main/config.json", "resolve"),
    ("/datasets/acme/d/resolve/refs%2Fpr%2F1/a/b.parquet", "resolve"),
    ("/gpt2/resolve/main/x", "resolve"),
    ("/api/models/acme/tiny", "info"),
    ("/api/models/gpt2", "info"),
    ("/api/models/acme/tiny/revision/main", "info"),
    ("/api/models/gpt2/revision/main", "info"),
    ("/api/datasets/acme/d/tree/main/sub/dir", "tree"),
    ("/api/models/acme/tiny/paths-info/main", "paths-info"),
    ("/api/models/acme/tiny/refs", "refs"),
    ("/api/spaces/acme/s/commits/main", "commits"),
    ("/api/models/acme/tiny/xet-read-token/abc", "xet-read-token"),
    ("/api/models/acme/tiny/treesize/main", "treesize"),
    ("/api/models/acme/tiny/auth-check", "auth-check"),
    ("/api/models/acme/tiny/nonsense/a/b/c", "api-other"),
    ("/api/whoami-v2", "whoami"),
    ("/api/admin/tokens", "admin"),
    ("/api/hooks/hub", "hooks"),
    ("/api/mirror/models/acme/tiny/sync", "mirror"),
    ("/api/anything/else", "api-other"),
    ("/", "ui"),
    ("/-/repos", "ui"),
    ("/metrics", "metrics"),
    ("/health", "health"),
    ("/ready", "ready"),
    ("/favicon.ico", "other"),
    ("/" + "a/" * 5000, "other"),
])
def test_routes_are_a_bounded_set(path: str, route: str) -> None:
    assert route_of(path) == route
    assert route in ROUTES
