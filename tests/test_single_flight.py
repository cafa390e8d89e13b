"""One upstream download per blob across the processes of one box: two `hubmirror serve` on the
same data directory (what `--workers 2` runs) share fills through the fill lease and the spool
file; a process killed in the middle of a fill is taken over at once, and the bytes its clients
got are proven before any resume is answered."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.hub import FakeHub
from helpers import Server, raw
from test_proxy import get_raw_body, proxy_server, sound

PATH = "/acme/big/resolve/main/model.safetensors"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=4).start()
    yield h
    h.stop()


def metric(server: Server, name: str, labels: str = "") -> float:
    text = raw(server.url, "GET", "/metrics").body.decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_two_processes_on_one_data_dir_download_each_blob_once(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(16 * 1024 * 1024)
    hub.commit("acme/big", {"model.safetensors": data})
    hub.fault("slow", "/blob/*", times=1, delay=0.01)  # keep the fill in flight while clients come
    a = proxy_server(tmp_path / "d", hub)
    b = proxy_server(tmp_path / "d", hub)
    try:
        # the first client starts the fill on a; then 15 more, spread over both
        first = concurrent.futures.ThreadPoolExecutor(1).submit(get_raw_body, a.url, PATH)
        deadline = time.monotonic() + 10
        while hub.file_bytes("acme/big", "model.safetensors") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        reqs = [(a if i % 2 else b, {} if i % 5 else {"Range": "bytes=1000-1999"}) for i in range(15)]
        with concurrent.futures.ThreadPoolExecutor(15) as pool:
            results = list(pool.map(lambda r: get_raw_body(r[0].url, PATH, r[1]), reqs))
        results.append(first.result(timeout=120))
        reqs.append((a, {}))
        for (_, hdrs), (status, body, complete) in zip(reqs, results):
            want = data[1000:2000] if hdrs else data
            assert complete and body == want, (hdrs, status, len(body))
        upstream = hub.file_bytes("acme/big", "model.safetensors")
        assert upstream <= 1.05 * len(data), upstream
        # b streamed a's download through its spool file while it was written
        assert metric(b, "hubmirror_fills_shared_total", '{how="followed"}') >= 1
        assert metric(b, "hubmirror_fills_total", '{trigger="full"}') == 0
        sound(tmp_path / "d")
        hub.reset_counters()
        assert get_raw_body(b.url, PATH)[1] == data and get_raw_body(a.url, PATH)[1] == data
        assert hub.file_bytes("acme/big") == 0
    finally:
        a.stop()
        b.stop()


def read_some(url: str, path: str, out: dict[str, bytes], key: str, headers: dict[str, str] | None = None) -> None:
    """GET and keep what arrives until the connection ends (cleanly or not)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    got = bytearray()
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        out[key + ":status"] = str(r.status).encode()
        while chunk := r.read1(1 << 16):
            got += chunk
    except (OSError, http.client.HTTPException):
        pass
    finally:
        out[key] = bytes(got)
        conn.close()


def test_a_process_killed_mid_fill_is_taken_over_and_its_clients_resume_onto_proven_bytes(
        hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(8 * 1024 * 1024)
    hub.commit("acme/big", {"model.safetensors": data})
    hub.fault("slow", "/blob/*", times=1, delay=0.05)  # 128 chunks: about 6 s
    a = proxy_server(tmp_path / "d", hub)
    b = proxy_server(tmp_path / "d", hub)
    got: dict[str, bytes] = {}
    try:
        ta = threading.Thread(target=read_some, args=(a.url, PATH, got, "a"))
        ta.start()
        deadline = time.monotonic() + 10
        while hub.file_bytes("acme/big", "model.safetensors") < 512 * 1024 and time.monotonic() < deadline:
            time.sleep(0.02)
        tb = threading.Thread(target=read_some, args=(b.url, PATH, got, "b"))
        tb.start()
        time.sleep(1.5)  # both clients hold unverified bytes of a's download
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        ta.join(30)
        tb.join(30)
        assert 0 < len(got["a"]) < len(data) and 0 < len(got["b"]) < len(data), (len(got["a"]), len(got["b"]))
        # no client saw a clean end: both were cut; what they hold is a prefix of the file
        assert data.startswith(got["a"]) and data.startswith(got["b"])

        # the killed holder's lease is gone with it: b fetches the blob itself, once
        t0 = time.monotonic()
        status, body, complete = get_raw_body(b.url, PATH)
        assert status == 200 and complete and body == data
        assert time.monotonic() - t0 < 30
        # both clients resume where they were cut, through b: a's bytes are proven by the checkpoint
        # a's journal row had, b's by its own record
        for k in ("a", "b"):
            n = len(got[k])
            status, rest, complete = get_raw_body(b.url, PATH, {"Range": f"bytes={n}-"})
            assert status == 206 and complete, (k, status)
            assert hashlib.sha256(got[k] + rest).hexdigest() == hashlib.sha256(data).hexdigest()
        assert metric(b, "hubmirror_unverified_resumes_total", '{result="proven"}') >= 1
        sound(tmp_path / "d")
    finally:
        a.stop()
        b.stop()


def test_two_processes_fire_a_schedule_once_per_interval(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/sched", {"config.json": b'{"v": 1}'})
    cfg = tmp_path / "hm.toml"
    cfg.write_text(f'''
upstream = "{hub.url}"
scheduler_tick = 0.2
upstream_backoff = 0.01

[[mirrors]]
repo = "acme/sched"
schedule = "10s"
''')
    a = Server(tmp_path / "d", "--config", str(cfg))
    b = Server(tmp_path / "d", "--config", str(cfg))
    try:
        t0 = time.monotonic()
        time.sleep(23)  # the first run at start, then about every 10-11 s: three runs
        # a check asks for the refs once; the first run also syncs, which asks once more
        checks = [p for _, p in list(hub.calls) if p == "/api/models/acme/sched/refs"]
        elapsed = time.monotonic() - t0
        assert 3 <= len(checks) <= int(elapsed // 10) + 2, (elapsed, hub.calls)
        # the process firing schedules dies: the other takes over at once (one box: flock)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        hub.calls.clear()
        time.sleep(12)
        assert "/api/models/acme/sched/refs" in [p for _, p in list(hub.calls)]
    finally:
        a.stop()
        b.stop()


def test_a_corrupt_download_followed_by_another_process_never_ends_cleanly_there(
        hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(4 * 1024 * 1024)
    hub.commit("acme/big", {"model.safetensors": data})
    hub.fault("flip", "/blob/*", times=1, at=len(data) - 1000)
    hub.fault("slow", "/blob/*", times=1, delay=0.03)
    a = proxy_server(tmp_path / "d", hub)
    b = proxy_server(tmp_path / "d", hub)
    got: dict[str, bytes] = {}
    try:
        ta = threading.Thread(target=read_some, args=(a.url, PATH, got, "a"))
        ta.start()
        deadline = time.monotonic() + 10
        while hub.file_bytes("acme/big", "model.safetensors") < 256 * 1024 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, body, complete = get_raw_body(b.url, PATH)  # follows a's download
        ta.join(30)
        assert not complete and len(body) < len(data), (status, len(body))
        assert len(got["a"]) < len(data)
        assert metric(b, "hubmirror_fills_shared_total", '{how="followed"}') == 1
        # nothing was published; the next request fetches good bytes, and resumes are proven
        status, body, complete = get_raw_body(b.url, PATH)
        assert status == 200 and complete and body == data
        sound(tmp_path / "d")
    finally:
        a.stop()
        b.stop()
