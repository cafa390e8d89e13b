"""A hostile or failing upstream (a real HTTP server) against a real hubmirror process: every
test asserts what a client sees (right bytes or a clean failure, a clear status), and that the
server stays bounded (memory, time, upstream requests, open files)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from fakes.hub import FakeHub
from helpers import Server, raw

from hubmirror.catalog import Catalog
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore

FAST = {"HUBMIRROR_UPSTREAM_BACKOFF": "0.01", "HUBMIRROR_PROXY__ORPHAN_GRACE": "0.3"}
HM = [sys.executable, "-m", "hubmirror"]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=1000).start()
    yield h
    h.stop()


def serve(data: Path, hub_url: str, *args: str, **env: str) -> Server:
    return Server(data, "--upstream", hub_url, *args, env={**FAST, **env})


# -- what a client sees -------------------------------------------------------------------------


def get(url: str, path: str, headers: dict[str, str] | None = None, *, stop_after: int | None = None,
        timeout: float = 60) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body, complete): a body cut by the server is returned, not raised;
    `stop_after`: hang up after that many body bytes (a client that goes away)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        if stop_after is not None:
            body = r.read(stop_after)
            return r.status, hdrs, body, False
        try:
            return r.status, hdrs, r.read(), True
        except http.client.IncompleteRead as e:
            return r.status, hdrs, e.partial, False
        except (ConnectionError, TimeoutError):
            return r.status, hdrs, b"", False
    finally:
        conn.close()


def deleted_open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)"):
            out.append(target)
    return out


def settle_deleted(pid: int, seconds: float = 3.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        left = deleted_open_files(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def metric(url: str, name: str, labels: str = "") -> float:
    text = raw(url, "GET", "/metrics").body.decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def stored(data: Path) -> set[str]:
    return {b.sha256 for b in LocalBlobStore(data / "blobs").list()}


# -- 1. never a wrong byte through a resume ------------------------------------------------------


def test_a_resume_onto_bytes_of_a_corrupted_fill_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    other = os.urandom(2 * 1024 * 1024)
    hub.commit("acme/flip", {"model.safetensors": data, "other.safetensors": other})
    s = serve(tmp_path / "d", hub.url)
    try:
        # two byte positions in two files; each fault hits one upstream body
        for name, content, at in (("model.safetensors", data, 1000), ("other.safetensors", other, len(other) // 2)):
            path = f"/acme/flip/resolve/main/{name}"
            hub.fault("flip", "/blob/*", times=1, at=at)
            # the client gets the bytes as they come (slow enough for the journal's checkpoints to
            # let it have the flipped byte before the end)
            hub.fault("slow", "/blob/*", times=1, delay=0.04)
            status, _h, first, complete = get(s.url, path)
            assert status == 200 and not complete  # the verdict came last: never a clean end
            assert len(first) > at and first[at] != content[at]  # the client does hold a wrong byte
            # it resumes where it stopped, as curl -C - and huggingface_hub do: refused, since its
            # bytes do not match the verified file (which the server fetched again to compare)
            status, h, body, complete = get(s.url, path, {"Range": f"bytes={len(first)}-"})
            assert status == 409 and h["x-error-code"] == "ResumeRefused", (status, body[:200])
            assert "download it again" in json.loads(body)["error"]
            # a whole GET gets the right bytes
            assert get(s.url, path)[2] == content
        # resumes of those corrupted transfers stay refused, also after a restart (the journal is
        # in the catalog); only a start past everything the failed fill ever sent is served
        path = "/acme/flip/resolve/main/other.safetensors"
        assert get(s.url, path, {"Range": "bytes=5000-"})[0] == 409
        s.stop()
        s = serve(tmp_path / "d", hub.url)
        assert get(s.url, path, {"Range": f"bytes={len(first) - 100}-"})[0] == 409
        path = "/acme/flip/resolve/main/model.safetensors"
        # reads that cannot stitch onto those bytes are served: from byte 0
        st, h, body, ok = get(s.url, path, {"Range": "bytes=0-99"})
        assert (st, body, ok) == (206, data[:100], True)
        assert get(s.url, path)[2] == data
    finally:
        s.stop()


def test_a_resume_onto_bytes_of_a_stopped_fill_is_served_once_they_prove_right(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(4 * 1024 * 1024)
    hub.commit("acme/cut", {"model.safetensors": data})
    hub.fault("slow", "/blob/*", times=1, delay=0.05)  # 64 KiB every 50 ms: the client can leave mid-way
    s = serve(tmp_path / "d", hub.url)
    path = "/acme/cut/resolve/main/model.safetensors"
    try:
        status, _h, first, _ = get(s.url, path, stop_after=300_000)  # then hangs up (Ctrl-C)
        assert status == 200 and first == data[:300_000]
        # the fill stops once its last client has gone (orphan_grace 0.3 s); its bytes were never verified
        deadline = time.monotonic() + 10
        while metric(s.url, "hubmirror_fills_orphaned_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(s.url, "hubmirror_fills_orphaned_total") == 1
        assert stored(tmp_path / "d") == set()
        # the resume is answered from a verified copy that the stopped fill's bytes match
        status, h, rest, complete = get(s.url, path, {"Range": f"bytes={len(first)}-"})
        assert (status, complete) == (206, True)
        assert first + rest == data
        assert metric(s.url, "hubmirror_unverified_resumes_total", '{result="proven"}') == 1
        assert settle_deleted(s.proc.pid) == []
    finally:
        s.stop()


def test_a_resume_after_the_server_was_killed_mid_fill(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(4 * 1024 * 1024)
    hub.commit("acme/kill", {"model.safetensors": data})
    hub.fault("slow", "/blob/*", times=1, delay=0.05)
    s = serve(tmp_path / "d", hub.url)
    path = "/acme/kill/resolve/main/model.safetensors"
    u = urlsplit(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path)
        first = conn.getresponse().read(300_000)
        assert first == data[:300_000]
        s.proc.kill()  # kill -9 in the middle of the fill
        s.proc.wait()
    finally:
        conn.close()
        s.stop()
    s = serve(tmp_path / "d", hub.url)
    try:
        # the new process hashed what the dead fill had written before sweeping it: the resume is
        # served once a verified copy proves those bytes right
        status, _h, rest, complete = get(s.url, path, {"Range": f"bytes={len(first)}-"})
        assert (status, complete) == (206, True)
        assert first + rest == data
        assert metric(s.url, "hubmirror_unverified_resumes_total", '{result="proven"}') == 1
        assert list((tmp_path / "d" / "blobs" / "tmp").iterdir()) == []
    finally:
        s.stop()


def test_a_resume_onto_a_bad_byte_sent_before_a_kill_9_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(4 * 1024 * 1024)
    hub.commit("acme/kill", {"model.safetensors": data})
    hub.fault("flip", "/blob/*", times=1, at=1000)
    hub.fault("slow", "/blob/*", times=1, delay=0.05)
    s = serve(tmp_path / "d", hub.url)
    path = "/acme/kill/resolve/main/model.safetensors"
    u = urlsplit(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path)
        first = conn.getresponse().read(300_000)
        assert first[1000] != data[1000]  # the client holds the bad byte
        s.proc.kill()
        s.proc.wait()
    finally:
        conn.close()
        s.stop()
    s = serve(tmp_path / "d", hub.url)
    try:
        status, h, _body, _ = get(s.url, path, {"Range": f"bytes={len(first)}-"})
        assert status == 409 and h["x-error-code"] == "ResumeRefused"
        assert get(s.url, path)[2] == data  # a fresh download is right
    finally:
        s.stop()


def test_a_closed_range_of_an_unverified_fill_never_ends_cleanly_on_bad_bytes(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    hub.commit("acme/rng", {"model.safetensors": data})
    s = serve(tmp_path / "d", hub.url)
    path = "/acme/rng/resolve/main/model.safetensors"
    try:
        hub.fault("flip", "/blob/*", times=1, at=50)
        status, _h, body, complete = get(s.url, path, {"Range": "bytes=0-99"})
        # byte 50 is wrong, and the range ends long before the file does: its last byte waits for
        # the verdict on the whole file, which fails, so the answer is cut, never a clean 206
        assert not complete or status >= 500, (status, len(body))
        assert stored(tmp_path / "d") == set()
        status, _h, body, complete = get(s.url, path, {"Range": "bytes=100-199"})
        assert (status, body, complete) == (206, data[100:200], True)
        # a suffix and a middle range of the now verified file
        assert get(s.url, path, {"Range": "bytes=-10"})[2] == data[-10:]
    finally:
        s.stop()


def test_failed_fills_return_their_space_at_once(hub: FakeHub, tmp_path: Path) -> None:
    files = {f"w{i}.bin": os.urandom(1024 * 1024 + i) for i in range(4)}
    hub.commit("acme/space", files)
    s = serve(tmp_path / "d", hub.url)
    try:
        for i, name in enumerate(files):
            if i % 2:
                hub.fault("flip", "/blob/*", times=1, at=10)
            else:
                hub.fault("cut", "/blob/*", times=20, at=200_000)
            with concurrent.futures.ThreadPoolExecutor(3) as pool:  # three clients on one failing fill
                list(pool.map(lambda _: get(s.url, f"/acme/space/resolve/main/{name}"), range(3)))
        deadline = time.monotonic() + 15  # a retrying client may have started a fill that still runs
        while metric(s.url, "hubmirror_fills_in_flight") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert settle_deleted(s.proc.pid) == []
        assert list((tmp_path / "d" / "blobs" / "tmp").iterdir()) == []
        assert "write after commit or cancel" not in s.log.read_text()
    finally:
        s.stop()


# -- 3. a slow or rate-limited upstream does not starve other misses ------------------------------


def trickle(size: int, every: float, active: list[int]) -> Any:
    """An upstream body that sends 16 bytes every `every` seconds (a read-gap timeout never trips)."""

    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Length": str(size)})
        await resp.prepare(request)
        active.append(1)
        try:
            for _ in range(size // 16):
                await resp.write(b"x" * 16)
                await asyncio.sleep(every)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            active.pop()
        return resp

    return respond


def test_trickling_bodies_are_cut_and_do_not_block_other_misses(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/slow", {"a.bin": os.urandom(100_000), "b.bin": os.urandom(100_000)})
    good = os.urandom(500_000)
    hub.commit("acme/fast", {"c.bin": good})
    active: list[int] = []
    hub.fault("respond", "/blob/*", times=2, fn=trickle(100_000, 0.5, active))
    s = serve(tmp_path / "d", hub.url, HUBMIRROR_UPSTREAM_MAX_CONCURRENCY="2", HUBMIRROR_UPSTREAM_MIN_RATE="1KiB",
              HUBMIRROR_UPSTREAM_SLOW_WINDOW="3")
    try:
        for p in ("a.bin", "b.bin"):  # metadata first, so that the bodies are what competes
            assert raw(s.url, "HEAD", f"/acme/slow/resolve/main/{p}").status == 200
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(get, s.url, f"/acme/slow/resolve/main/{p}") for p in ("a.bin", "b.bin")]
            time.sleep(1.0)
            assert len(active) == 2  # both file slots are taken by trickles
            t0 = time.monotonic()
            info = raw(s.url, "GET", "/api/models/acme/fast/revision/main")  # metadata: its own slots
            assert info.status == 200 and time.monotonic() - t0 < 2
            status, _h, body, complete = get(s.url, "/acme/fast/resolve/main/c.bin")
            waited = time.monotonic() - t0
            assert (status, complete, body == good) == (200, True, True)
            assert waited < 8, waited  # the trickles were cut after the 3 s window, not after minutes
            for f in slow:
                st, _h, b, ok = f.result(timeout=30)
                assert not (ok and st == 200), "a trickle must never end as a clean 200"
        assert metric(s.url, "hubmirror_upstream_too_slow_total") == 2
        assert stored(tmp_path / "d") == {hashlib.sha256(good).hexdigest()}
    finally:
        s.stop()


def test_a_fill_whose_clients_left_stops_and_hangs_up_unless_its_blob_is_pinned(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/gone", {"a.bin": os.urandom(200_000)})
    pinned_data = os.urandom(1024 * 1024)
    pinned_commit = hub.commit("acme/pinned", {"p.bin": pinned_data})
    active: list[int] = []
    hub.fault("respond", "/blob/*", times=1, fn=trickle(200_000, 0.05, active))
    s = serve(tmp_path / "d", hub.url)
    try:
        get(s.url, "/acme/gone/resolve/main/a.bin", stop_after=64)
        deadline = time.monotonic() + 5
        while active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert active == []  # the upstream connection was closed: no slot, no socket held
        assert metric(s.url, "hubmirror_fills_orphaned_total") == 1
        assert settle_deleted(s.proc.pid) == []
        # a pinned commit's blob is wanted: its fill goes on without clients
        assert raw(s.url, "HEAD", "/acme/pinned/resolve/main/p.bin").status == 200
        cat = Catalog(f"sqlite:///{tmp_path / 'd' / 'catalog.sqlite3'}")
        repo = cat.get_repo(RepoRef(RepoType.MODEL, "acme/pinned"))
        assert repo is not None
        cat.pin(repo.pk, pinned_commit, "main", "test")
        cat.close()
        hub.fault("slow", "/blob/*", times=1, delay=0.2)  # 64 KiB every 0.2 s: ~3 s, far past the grace
        get(s.url, "/acme/pinned/resolve/main/p.bin", stop_after=10)
        deadline = time.monotonic() + 10
        while hashlib.sha256(pinned_data).hexdigest() not in stored(tmp_path / "d") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hashlib.sha256(pinned_data).hexdigest() in stored(tmp_path / "d")
    finally:
        s.stop()


def test_waiting_on_a_429_holds_no_slot(hub: FakeHub) -> None:
    """The client level: a patient request (a sync) waiting out a 429 leaves the one API slot free."""
    from hubmirror.hub import HubClient, Shared

    hub.commit("acme/limited", {"x.txt": b"x"})
    hub.commit("acme/free", {"y.txt": b"y"})
    hub.fault("status", "/api/models/acme/limited/refs", times=1, status=429, headers={"Retry-After": "3"})

    async def go() -> tuple[float, float]:
        async with HubClient(hub.url, shared=Shared.make(1, 1), backoff_base=0.01) as c:
            t0 = time.monotonic()
            waiting = asyncio.create_task(c.refs(RepoRef(RepoType.MODEL, "acme/limited")))
            await asyncio.sleep(0.3)
            await c.repo_info(RepoRef(RepoType.MODEL, "acme/free"), "main")
            other = time.monotonic() - t0
            await waiting
            return other, time.monotonic() - t0

    other, limited = asyncio.run(go())
    assert other < 1.5, other  # not queued behind the 3 s wait
    assert limited >= 2.9, limited  # and the 429 was honoured


# -- 6. bounded answers ---------------------------------------------------------------------------


def huge_tree(n: int, counter: list[int]) -> Any:
    """A tree listing of `n` files served 1,000 a page, generated on the fly."""

    async def respond(request: web.Request) -> web.StreamResponse:
        counter.append(1)
        start = int(request.query.get("cursor", "0"))
        page = [{"type": "file", "path": f"d{i // 1000}/f{i}.txt", "size": 1, "oid": hashlib.sha1(str(i).encode()).hexdigest()}
                for i in range(start, min(n, start + 1000))]
        headers = {}
        if start + 1000 < n:
            headers["Link"] = f'<{request.url.with_query(recursive="true", cursor=str(start + 1000))}>; rel="next"'
        return web.json_response(page, headers=headers)

    return respond


def test_a_tree_of_a_million_entries_is_refused_quickly_and_cheaply(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/cached", {"c.txt": b"cached"})
    hub.commit("evil/wide", {"x.txt": b"x"})
    pages: list[int] = []
    hub.fault("respond", "/api/models/evil/wide/tree/*", times=10_000, fn=huge_tree(1_000_000, pages))
    s = serve(tmp_path / "d", hub.url, HUBMIRROR_UPSTREAM_MAX_ENTRIES="50000")
    try:
        assert get(s.url, "/acme/cached/resolve/main/c.txt")[2] == b"cached"
        rss0 = peak_rss_mb(s.proc.pid)
        latencies: list[float] = []
        done = threading.Event()

        def probe() -> None:  # a cached file keeps its latency while the hostile listing is processed
            while not done.is_set():
                t = time.monotonic()
                assert raw(s.url, "GET", "/acme/cached/resolve/main/c.txt").status == 200
                latencies.append(time.monotonic() - t)
                time.sleep(0.02)

        prober = threading.Thread(target=probe)
        prober.start()
        t0 = time.monotonic()
        r = raw(s.url, "GET", "/evil/wide/resolve/main/x.txt")
        took = time.monotonic() - t0
        done.set()
        prober.join()
        assert r.status == 502 and r.headers["x-error-code"] == "UpstreamError"
        assert "upstream_max_entries" in r.json()["error"]
        assert len(pages) <= 51  # it stopped at the limit: not a million entries, not 1,000 pages
        assert took < 20, took
        assert peak_rss_mb(s.proc.pid) - rss0 < 150
        latencies.sort()
        assert latencies and latencies[len(latencies) // 2] < 0.05 and latencies[-1] < 2.0, latencies[-5:]
        # nothing of it was recorded: the next request asks again (and is refused again)
        assert raw(s.url, "GET", "/api/models/evil/wide").status == 502
    finally:
        s.stop()


def test_oversized_json_and_error_bodies_are_not_read(hub: FakeHub, tmp_path: Path) -> None:
    sent = {"info": 0, "error": 0}

    def big(kind: str, status: int, declare: bool) -> Any:
        async def respond(request: web.Request) -> web.StreamResponse:
            size = 400 * 1024 * 1024
            headers = {"Content-Type": "application/json"}
            if declare:
                headers["Content-Length"] = str(size)
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(request)
            chunk = b"[" + b"1," * (512 * 1024)
            try:
                while sent[kind] < size:
                    await resp.write(chunk)
                    sent[kind] += len(chunk)
            except (ConnectionError, asyncio.CancelledError):
                pass
            return resp

        return respond

    hub.commit("evil/info", {"x.txt": b"x"})
    hub.commit("evil/err", {"x.txt": b"x"})
    hub.fault("respond", "/api/models/evil/info/revision/*", times=1, fn=big("info", 200, declare=False))
    hub.fault("respond", "/api/models/evil/err/revision/*", times=1, fn=big("error", 500, declare=True))
    s = serve(tmp_path / "d", hub.url, HUBMIRROR_PROXY__RETRIES="0")
    try:
        rss0 = peak_rss_mb(s.proc.pid)
        t0 = time.monotonic()
        r = raw(s.url, "GET", "/api/models/evil/info")
        assert r.status == 502 and "upstream_max_json" in r.json()["error"]
        r = raw(s.url, "GET", "/api/models/evil/err")
        assert r.status in (401, 502, 503) and "error" in r.json()  # 401: RepoNotFound to an anonymous client
        assert time.monotonic() - t0 < 20
        assert sent["info"] < 32 * 1024 * 1024  # stopped reading past the 16 MiB limit
        assert sent["error"] < 16 * 1024 * 1024  # an error body: a few KiB read, then hung up
        assert peak_rss_mb(s.proc.pid) - rss0 < 120
    finally:
        s.stop()


def test_an_endless_next_link_stops_at_the_page_limit(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("evil/loop", {"x.txt": b"x"})
    hub.commit("evil/empty", {"x.txt": b"x"})
    calls = {"loop": 0, "empty": 0}

    def endless(kind: str) -> Any:
        async def respond(request: web.Request) -> web.StreamResponse:
            calls[kind] += 1
            n = calls[kind]
            page = [] if kind == "empty" else [{"type": "file", "path": f"f{n}.txt", "size": 1,
                                                "oid": hashlib.sha1(str(n).encode()).hexdigest()}]
            return web.json_response(page, headers={"Link": f'<{request.url.with_query(cursor=str(n))}>; rel="next"'})

        return respond

    hub.fault("respond", "/api/models/evil/loop/tree/*", times=100_000, fn=endless("loop"))
    hub.fault("respond", "/api/models/evil/empty/tree/*", times=100_000, fn=endless("empty"))
    s = serve(tmp_path / "d", hub.url, HUBMIRROR_UPSTREAM_MAX_PAGES="40")
    try:
        r = raw(s.url, "GET", "/evil/loop/resolve/main/f1.txt")
        assert r.status == 502 and "upstream_max_pages" in r.json()["error"]
        assert calls["loop"] == 40
        r = raw(s.url, "GET", "/evil/empty/resolve/main/x.txt")
        assert r.status == 502 and "empty page" in r.json()["error"]
        assert calls["empty"] == 1
    finally:
        s.stop()


# -- 8. no traceback for a redirect to credentials -----------------------------------------------


def test_a_redirect_to_a_url_with_credentials_is_a_clean_error(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("evil/creds", {"model.safetensors": os.urandom(1000)})
    up = urlsplit(hub.url)
    creds = f"http://user:secret@{up.hostname}:{up.port}/blob/x"
    hub.fault("redirect", "/evil/creds/resolve/*", times=100, location=creds)
    s = serve(tmp_path / "d", hub.url)
    try:
        r = raw(s.url, "GET", "/evil/creds/resolve/main/model.safetensors")
        assert r.status == 502 and "credentials" in r.json()["error"] and "secret" not in r.body.decode()
        assert "Traceback" not in s.log.read_text()
    finally:
        s.stop()
    p = subprocess.run([*HM, "sync", "evil/creds", "--data", str(tmp_path / "d2"), "--upstream", hub.url, "--json"],
                       capture_output=True, text=True, env={**os.environ, **FAST})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "failed" and "credentials" in out["error"] and "secret" not in p.stdout


# -- 10. a 1-byte Range of an uncached file fetches the file: counted ----------------------------


def test_a_range_that_starts_a_fill_is_counted(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    hub.commit("acme/one", {"model.safetensors": data})
    s = serve(tmp_path / "d", hub.url)
    try:
        st, _h, body, ok = get(s.url, "/acme/one/resolve/main/model.safetensors", {"Range": "bytes=5-5"})
        assert (st, body, ok) == (206, data[5:6], True)
        assert metric(s.url, "hubmirror_fills_total", '{trigger="range"}') == 1
        assert metric(s.url, "hubmirror_fill_bytes_total", '{trigger="range"}') == len(data)
    finally:
        s.stop()


# -- 11. an outage after a restart: stale answers at cache speed ---------------------------------


class BlackHole:
    """An "upstream" that accepts connections and never answers (packets silently dropped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self._stop = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.t.join()
        for c in self.conns:
            c.close()
        self.sock.close()


def battery(url: str, repo: str) -> list[tuple[int, str | None]]:
    """What a client does on a branch: repo info, tree, a HEAD and a GET of a file."""
    out = []
    for method, path in (("GET", f"/api/models/{repo}/revision/main"), ("GET", f"/api/models/{repo}/tree/main"),
                         ("HEAD", f"/{repo}/resolve/main/config.json"), ("GET", f"/{repo}/resolve/main/config.json")):
        r = raw(url, method, path)
        out.append((r.status, r.headers.get("x-hubmirror-stale")))
    return out


@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_an_outage_after_a_restart_serves_stale_at_cache_speed(hub: FakeHub, tmp_path: Path, outage: str) -> None:
    hub.commit("acme/kept", {"config.json": b'{"a": 1}', "w.bin": os.urandom(1000)})
    s = serve(tmp_path / "d", hub.url)
    try:
        assert all(st == 200 for st, _ in battery(s.url, "acme/kept"))
    finally:
        s.stop()
    hole = BlackHole() if outage == "silent" else None
    upstream = hole.url if hole else hub.url
    hub.stop()
    s = serve(tmp_path / "d", upstream, HUBMIRROR_PROXY__CONNECT_TIMEOUT="1", HUBMIRROR_PROXY__API_TIMEOUT="2")
    try:
        t0 = time.monotonic()
        first = battery(s.url, "acme/kept")
        first_took = time.monotonic() - t0
        t0 = time.monotonic()
        rest = [battery(s.url, "acme/kept") for _ in range(10)]
        rest_took = time.monotonic() - t0
        for answers in [first, *rest]:
            assert [st for st, _ in answers] == [200, 200, 200, 200]
            assert all(stale and "upstream unreachable" in stale for _, stale in answers[:3])
        assert first_took < 6, first_took  # at most one timeout is paid, not one per request
        # 40 requests while the breaker holds: cache speed (paying the timeout each would take 80 s)
        assert rest_took < 8, rest_took
        assert metric(s.url, "hubmirror_upstream_unreachable") == 1
    finally:
        s.stop()
        if hole:
            hole.close()
