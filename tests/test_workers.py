"""`hubmirror serve --workers N`: a supervisor and N server processes on one port, as real
processes: both workers answer, the real client downloads, a killed worker is replaced, SIGTERM
stops everything, a worker that cannot start stops the server with its error."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Fixture
from helpers import Server, free_port, run_client

PATH = "/acme/tiny/resolve/main/config.json"


def _children(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(name))
    return out


def _workers(server: Server, count: int = 2, timeout: float = 15.0) -> set[int]:
    """The worker pids, once `count` are running."""
    deadline = time.monotonic() + timeout
    while True:
        kids = _children(server.proc.pid)
        if len(kids) == count or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _established(pids: set[int], port: int) -> dict[int, int]:
    """How many established connections to `port` each process holds (its socket inodes matched
    against /proc/net/tcp)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f[9])
    out = {}
    for pid in pids:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                n += 1
        out[pid] = n
    return out


def _head(url: str, path: str = PATH) -> int:
    conn = http.client.HTTPConnection(url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]), timeout=30)
    try:
        conn.request("HEAD", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def two(fixture_data: Fixture) -> Iterator[Server]:
    s = Server(fixture_data.data, "--offline", "--workers", "2")
    yield s
    s.stop()


def test_both_workers_accept_connections(two: Server) -> None:
    workers = _workers(two)
    assert len(workers) == 2, workers
    conns = []
    try:
        for _ in range(32):  # each on a new connection, kept open: the kernel spreads them
            c = http.client.HTTPConnection("127.0.0.1", two.port, timeout=30)
            c.request("HEAD", PATH)
            r = c.getresponse()
            r.read()
            assert r.status == 200
            conns.append(c)
        held = _established(workers, two.port)
    finally:
        for c in conns:
            c.close()
    assert sum(held.values()) == 32, held
    assert all(n > 0 for n in held.values()), held
    assert "with 2 workers" in two.log.read_text()


def test_the_real_client_downloads_through_two_workers(two: Server, fixture_data: Fixture, hf_home: Path) -> None:
    res = run_client(
        """
        import hashlib
        from huggingface_hub import hf_hub_download
        out({n: hashlib.sha256(open(hf_hub_download("acme/tiny", n), "rb").read()).hexdigest()
             for n in ["config.json", "big.dat", "weights.bin"]})
        """,
        two.url, hf_home,
    )
    assert res == {n: hashlib.sha256(fixture_data.files[n]).hexdigest() for n in ["config.json", "big.dat", "weights.bin"]}


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(two: Server) -> None:
    workers = _workers(two)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    # new connections right away: those hashed to the dead worker's socket wait for its successor
    assert [_head(two.url) for _ in range(20)] == [200] * 20
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = _children(two.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and victim not in now, (workers, now)
    assert workers - {victim} < now  # the other one was left alone
    assert [_head(two.url) for _ in range(20)] == [200] * 20
    log = two.log.read_text()
    assert f"(pid {victim}) was killed by SIGKILL" in log, log[-2000:]
    assert "Traceback" not in log


def test_sigterm_stops_every_worker(fixture_data: Fixture) -> None:
    s = Server(fixture_data.data, "--offline", env={"HUBMIRROR_WORKERS": "3"})  # the setting, not the flag
    try:
        workers = _workers(s, 3)
        assert len(workers) == 3, workers
        assert _head(s.url) == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(20) == 0
    finally:
        s.stop()
    assert not [p for p in workers if _alive(p)]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", s.port), timeout=2):
        pass
    assert "Traceback" not in s.log.read_text()


def test_workers_stop_when_the_supervisor_is_killed(fixture_data: Fixture) -> None:
    s = Server(fixture_data.data, "--offline", "--workers", "2")
    try:
        workers = _workers(s)
        assert len(workers) == 2
        s.proc.kill()
        s.proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and [p for p in workers if _alive(p)]:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)]
    finally:
        s.stop()


def _serve(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubmirror", "serve", *args], check=False, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("value", ["0", "abc", "65"])
def test_a_bad_worker_count_is_a_clean_error(value: str, tmp_path: Path) -> None:
    p = _serve("--data", str(tmp_path), "--port", str(free_port()), "--workers", value)
    assert p.returncode == 2
    assert "Invalid value for '--workers'" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_bad_worker_setting_is_a_clean_error(tmp_path: Path) -> None:
    p = _serve("--data", str(tmp_path), "--port", str(free_port()), env={"HUBMIRROR_WORKERS": "0"})
    assert p.returncode == 1
    assert "invalid configuration: workers:" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    port = free_port()
    t0 = time.monotonic()
    p = _serve("--data", str(tmp_path / "file" / "data"), "--port", str(port), "--workers", "2")
    assert p.returncode == 1
    assert time.monotonic() - t0 < 20
    assert "error: data directory" in p.stderr and "is not writable" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_port_in_use_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        p = _serve("--data", str(tmp_path), "--port", str(busy.getsockname()[1]), "--workers", "2")
    assert p.returncode == 1
    assert "cannot listen on 127.0.0.1" in p.stderr and "Traceback" not in p.stderr, p.stderr
