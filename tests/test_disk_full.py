"""A full disk is a clean condition, proven on a real small filesystem (a 64 MB tmpfs as the data
dir): cached content keeps being served, writes that cannot happen answer 507 InsufficientStorage
(never 500), fills that run out of space mid-write abort cleanly and give their space back at once,
and the CLI reports the failure without a traceback.

These tests mount a tmpfs, so they need root; a failed mount fails the test (it is not skipped).
The disk is filled with a filler file (zeros until ENOSPC), then exactly what a scenario needs is
freed by shrinking the filler.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fakes.hub import FakeHub
from helpers import Server, raw

from hubmirror.catalog import Catalog
from hubmirror.ingest import import_folder
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore

MB = 1024 * 1024
PAGE = 4096
FAST = {"HUBMIRROR_UPSTREAM_BACKOFF": "0.01"}
NO_RESERVE = {**FAST, "HUBMIRROR_PROXY__MIN_FREE": "0"}


# -- the small disk ---------------------------------------------------------------------------


class Disk:
    """A 64 MB tmpfs and a filler file on it that takes whatever space a test wants taken.

    It is mounted when a test first asks for its path, so that a failed mount fails that test
    (as a test failure, with the reason) instead of erroring in the fixture or skipping."""

    def __init__(self, mountpoint: Path) -> None:
        self._mnt = mountpoint
        self.mounted = False

    @property
    def path(self) -> Path:
        if not self.mounted:
            self._mount()
        return self._mnt

    @property
    def filler(self) -> Path:
        return self.path / "filler.zeros"

    def _mount(self) -> None:
        cmd = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(self._mnt)]
        p = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"cannot mount a 64 MB tmpfs at {self._mnt} (these tests need root and mount(8)): "
                        f"`{' '.join(cmd)}` exited {p.returncode}: {(p.stderr or p.stdout).strip()}", pytrace=False)
        self.mounted = True
        st = os.statvfs(self._mnt)
        assert st.f_blocks * st.f_frsize == 64 * MB, f"the tmpfs at {self._mnt} is not 64 MB"

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self._mnt)], check=False, capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self._mnt)], check=False, capture_output=True)
            self.mounted = False

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def filler_size(self) -> int:
        return self.filler.stat().st_size if self.filler.exists() else 0

    def _grow(self, limit: int | None = None) -> None:
        """Append zeros to the filler until ENOSPC (or `limit` bytes were added)."""
        added = 0
        zeros = bytes(MB)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (MB, PAGE):
                while limit is None or added < limit:
                    n = chunk if limit is None else min(chunk, limit - added)
                    try:
                        w = os.write(fd, zeros[:n])
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
                    added += w
                    if w < n:  # a short write: the disk is full
                        break
        finally:
            os.close(fd)

    def fill(self) -> None:
        """Take every free byte."""
        self._grow()
        assert self.free() == 0, f"the filler left {self.free()} bytes free"

    def leave_free(self, n: int) -> None:
        """Resize the filler so that exactly `n` bytes (a multiple of the page size) are free."""
        assert n % PAGE == 0
        have = self.free()
        if have > n:
            self._grow(have - n)
        elif have < n:
            size = self.filler_size()
            assert size >= n - have, f"cannot free {n - have} bytes: the filler holds only {size}"
            os.truncate(self.filler, size - (n - have))

    def release(self) -> None:
        """Give back all the space the filler took."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    d = Disk(mnt)
    try:
        yield d
    finally:  # even when the test failed; `umount -l` if something still holds the mount
        d.unmount()


# -- helpers ----------------------------------------------------------------------------------


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool


def get(url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Got:
    """One request; a body cut by the server comes back with complete=False instead of raising."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        try:
            return Got(r.status, hdrs, r.read(), True)
        except http.client.IncompleteRead as e:
            return Got(r.status, hdrs, e.partial, False)
        except (ConnectionError, http.client.HTTPException):
            return Got(r.status, hdrs, b"", False)
    except (ConnectionError, http.client.RemoteDisconnected):
        return Got(0, {}, b"", False)
    finally:
        conn.close()


def assert_insufficient_storage(r: Got | Any, what: str) -> None:
    """A clean 507: the Hub's error header and a JSON body {"error": ...} that talks about the disk."""
    assert r.status == 507, f"{what}: expected 507 InsufficientStorage, got {r!r}"
    assert r.headers.get("x-error-code") == "InsufficientStorage", f"{what}: {r.headers}"
    body = json.loads(r.body)
    assert isinstance(body.get("error"), str) and "disk" in body["error"].lower(), f"{what}: {body}"


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def import_repo(data: Path, repo: str, src: Path) -> str:
    """Import with the library (a catalog closed cleanly afterwards, as after `hubmirror import`)."""
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    try:
        catalog.migrate()
        res = import_folder(catalog, LocalBlobStore(data / "blobs"), RepoRef(RepoType.MODEL, repo), src)
        return res.commit
    finally:
        catalog.close()


def hubmirror(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubmirror", *args], check=False, capture_output=True, text=True,
                          env={**os.environ, **FAST, **(env or {})}, timeout=120)


def deleted_fds(pid: int) -> list[str]:
    out = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed meanwhile
        if target.endswith("(deleted)"):
            out.append(f"{fd} -> {target}")
    return out


def small_repo() -> dict[str, bytes]:
    return {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"---\nlicense: mit\n---\n# small\n",
        "config.json": b'{"model_type": "bert"}\n',
        "weights.bin": os.urandom(MB + 17),
    }


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=100).start()
    yield h
    h.stop()


# -- 1. cached content on a full disk ---------------------------------------------------------


def test_cached_content_is_served_when_the_disk_is_full(disk: Disk, tmp_path: Path) -> None:
    files = small_repo()
    commit = import_repo(disk.path, "acme/small", write_folder(tmp_path / "src", files))
    s = Server(disk.path, "--offline")
    try:
        assert get(s.url, "/acme/small/resolve/main/config.json").status == 200
        disk.fill()
        for _ in range(2):  # also after the first answers tried to record anything
            for p, want in files.items():
                g = get(s.url, f"/acme/small/resolve/main/{p}")
                assert (g.status, g.complete, g.body == want) == (200, True, True), (p, g.status, g.headers)
                h = get(s.url, f"/acme/small/resolve/main/{p}", method="HEAD")
                assert h.status == 200 and h.headers["x-repo-commit"] == commit
                assert int(h.headers["content-length"]) == len(want)
            g = get(s.url, "/acme/small/resolve/main/weights.bin", headers={"Range": "bytes=100-199"})
            assert g.status == 206 and g.body == files["weights.bin"][100:200]
            info = raw(s.url, "GET", "/api/models/acme/small")
            assert info.status == 200 and info.json()["sha"] == commit, info
            tree = raw(s.url, "GET", "/api/models/acme/small/tree/main?recursive=true")
            assert tree.status == 200 and {e["path"] for e in tree.json()} == set(files), tree
            pi = raw(s.url, "POST", "/api/models/acme/small/paths-info/main",
                     headers={"Content-Type": "application/json"},
                     body=json.dumps({"paths": ["config.json", "weights.bin"]}).encode())
            assert pi.status == 200 and sorted(e["path"] for e in pi.json()) == ["config.json", "weights.bin"], pi
            time.sleep(1.2)  # past the 1 s revision cache and any batched bookkeeping
        assert disk.free() == 0
        assert get(s.url, "/health").status == 200
    finally:
        s.stop()
    log = s.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


# -- 2. a new pull-through repo needs catalog writes --------------------------------------------


def test_pull_through_of_a_new_repo_on_a_full_disk_is_a_clean_507(disk: Disk, hub: FakeHub) -> None:
    files = {"README.md": b"# fresh\n", "config.json": b'{"fresh": true}\n', "w.bin": os.urandom(300_000)}
    c1 = hub.commit("acme/fresh", files)
    s = Server(disk.path, "--upstream", hub.url, env=NO_RESERVE)
    try:
        disk.fill()
        path = "/acme/fresh/resolve/main/config.json"
        assert_insufficient_storage(get(s.url, path), "GET of a file of a new repo")
        h = get(s.url, path, method="HEAD")
        assert h.status == 507 and h.headers.get("x-error-code") == "InsufficientStorage", h
        assert_insufficient_storage(get(s.url, "/api/models/acme/fresh"), "repo info of a new repo")
        assert_insufficient_storage(get(s.url, path), "the same GET again")  # nothing cached as an answer
        assert hub.file_bytes("acme/fresh") == 0
        disk.release()
        g = get(s.url, path)
        assert (g.status, g.body, g.complete) == (200, files["config.json"], True), g
        assert g.headers["x-repo-commit"] == c1
        for p, want in files.items():
            g = get(s.url, f"/acme/fresh/resolve/main/{p}")
            assert (g.status, g.body == want, g.complete) == (200, True, True), (p, g.status)
        tree = raw(s.url, "GET", "/api/models/acme/fresh/tree/main?recursive=true")
        assert tree.status == 200 and {e["path"] for e in tree.json()} == set(files), tree
        assert raw(s.url, "GET", "/api/models/acme/fresh").json()["sha"] == c1
    finally:
        s.stop()
    log = s.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def test_min_free_refuses_a_fill_up_front_before_any_upstream_byte(disk: Disk, hub: FakeHub) -> None:
    files = {"config.json": b"{}", "model.safetensors": os.urandom(2 * MB)}
    hub.commit("acme/reserve", files)
    s = Server(disk.path, "--upstream", hub.url, env={**FAST, "HUBMIRROR_PROXY__MIN_FREE": "16MiB"})
    try:
        assert get(s.url, "/acme/reserve/resolve/main/model.safetensors", method="HEAD").status == 200
        disk.leave_free(8 * MB)  # room for the file, not for the file and the reserve
        hub.reset_counters()
        r = get(s.url, "/acme/reserve/resolve/main/model.safetensors")
        assert_insufficient_storage(r, "a fill that would eat into min_free")
        assert hub.file_bytes("acme/reserve") == 0, hub.bytes_served
        assert not any(p.startswith("/blob/") or "/resolve/" in p for _, p in hub.calls), hub.calls
        assert os.listdir(disk.path / "blobs" / "tmp") == []
    finally:
        s.stop()


# -- 3. two fills run out of space mid-write ----------------------------------------------------


def test_concurrent_fills_that_run_out_of_space_abort_cleanly_and_return_the_space(
    disk: Disk, hub: FakeHub
) -> None:
    a, b = os.urandom(12 * MB + 11), os.urandom(12 * MB + 13)
    want = {"a.safetensors": a, "b.safetensors": b}
    hub.commit("acme/two", {"config.json": b"{}", **want})
    s = Server(disk.path, "--upstream", hub.url, env=NO_RESERVE)
    tmp = disk.path / "blobs" / "tmp"
    try:
        for p in want:  # the listing is recorded while there is room; only the blobs are missing
            assert get(s.url, f"/acme/two/resolve/main/{p}", method="HEAD").status == 200
        # each fill passes the free-space check (12 MB each)...
        disk.leave_free(20 * MB)
        before = disk.free()
        grown_from = disk.filler_size()
        hub.fault("slow", "/blob/*", times=2, delay=0.02)  # ~4 s a file: both are in flight together
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futs = {p: pool.submit(get, s.url, f"/acme/two/resolve/main/{p}") for p in want}
            deadline = time.monotonic() + 10
            while len([n for n in os.listdir(tmp) if n.endswith(".partial")]) < 2:
                assert time.monotonic() < deadline, f"the two fills never started: {os.listdir(tmp)}"
                time.sleep(0.005)
            # ...then, both under way, only ~8 MB is left for the two of them: neither can finish,
            # even with all the space of the other one back
            disk.leave_free(8 * MB)
            grabbed = disk.filler_size() - grown_from
            got = {p: f.result(timeout=60) for p, f in futs.items()}
        for p, g in got.items():
            data = want[p]
            if g.complete:  # a clean answer must be a clean error
                assert g.status in (503, 507), (p, g.status, g.headers, g.body[:300])
                assert g.headers.get("x-error-code") in ("InsufficientStorage", "UpstreamUnavailable"), g.headers
                assert "error" in json.loads(g.body), g.body[:300]
            else:  # an aborted body: a prefix of the right bytes, never all of them
                assert g.status == 200 and len(g.body) < len(data), (p, g.status, len(g.body))
                assert g.body == data[: len(g.body)], f"{p}: wrong bytes in the aborted body"
        log = s.log.read_text(errors="replace")
        assert "disk full" in log, log[-4000:]
        assert "write after commit or cancel" not in log, log[-4000:]
        # cleanup: no deleted spool file held open, no partial file, the space is back
        deadline = time.monotonic() + 2.0
        while True:
            held, left = deleted_fds(s.proc.pid), os.listdir(tmp)
            returned = disk.free() + grabbed
            if not held and not left and abs(returned - before) <= 256 * 1024:
                break
            if time.monotonic() > deadline:
                fds = subprocess.run(["ls", "-l", f"/proc/{s.proc.pid}/fd"], check=False, capture_output=True,
                                     text=True).stdout
                pytest.fail(f"after the failed fills: deleted files held open: {held}; left in blobs/tmp: {left}; "
                            f"free {disk.free()} + {grabbed} grabbed = {returned}, was {before} before the fills "
                            f"(diff {before - returned})\nls -l /proc/{s.proc.pid}/fd:\n{fds}")
            time.sleep(0.1)
        # with room again, both files come down right
        disk.release()
        for p, data in want.items():
            g = get(s.url, f"/acme/two/resolve/main/{p}")
            assert (g.status, g.complete, len(g.body)) == (200, True, len(data)), p
            assert hashlib.sha256(g.body).digest() == hashlib.sha256(data).digest(), p
    finally:
        s.stop()


# -- 4. the CLI on a full disk ------------------------------------------------------------------


def one_json_object(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (f"expected exactly one JSON object on stdout, got {p.stdout!r} "
                             f"(exit {p.returncode}, stderr {p.stderr[-2000:]!r})")
    obj = json.loads(lines[0])
    assert isinstance(obj, dict), obj
    return obj


def assert_failed_for_disk(p: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    assert "Traceback" not in p.stderr + p.stdout, f"{what}: traceback\n{p.stderr}"
    assert p.returncode == 1, f"{what}: exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    obj = one_json_object(p)
    assert obj.get("status") == "failed", f"{what}: {obj}"
    assert "disk" in str(obj.get("error", "")).lower(), f"{what}: {obj}"
    return obj


def cli_args(command: str, data: Path, hub: FakeHub, src: Path) -> list[str]:
    return {
        "sync --json": ["sync", "acme/cli", "--data", str(data), "--upstream", hub.url, "--json"],
        "import --json": ["import", "acme/imp", str(src), "--data", str(data), "--json"],
        "import": ["import", "acme/imp", str(src), "--data", str(data)],
    }[command]


def check_cli_failure(command: str, p: subprocess.CompletedProcess[str]) -> None:
    if command.endswith("--json"):
        assert_failed_for_disk(p, command)
    else:  # one "error: ..." line, no traceback
        assert "Traceback" not in p.stderr + p.stdout, f"{command}: traceback\n{p.stderr}"
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "disk" in lines[0].lower(), p.stderr


def check_cli_recovers(command: str, args: list[str]) -> None:
    """Nothing half-recorded: with room again the same command works."""
    p = hubmirror(*args, "--json") if command == "import" else hubmirror(*args)
    assert p.returncode == 0, (command, p.stdout, p.stderr)
    assert json.loads(p.stdout)["status"] == ("synced" if command.startswith("sync") else "committed"), p.stdout


def cli_setup(disk: Disk, hub: FakeHub, tmp_path: Path) -> Path:
    """A data dir in use (its catalog exists, closed cleanly) and a folder to import outside the tmpfs."""
    hub.commit("acme/cli", {"config.json": b'{"cli": 1}\n', "w.bin": os.urandom(MB)})
    import_repo(disk.path, "acme/existing", write_folder(tmp_path / "existing", {"config.json": b"{}"}))
    return write_folder(tmp_path / "src", small_repo())


@pytest.mark.parametrize("command", ["sync --json", "import --json", "import"])
def test_cli_on_a_full_disk_fails_cleanly(disk: Disk, hub: FakeHub, tmp_path: Path, command: str) -> None:
    """No other process has the catalog open (a cron job while the server is down, say)."""
    args = cli_args(command, disk.path, hub, cli_setup(disk, hub, tmp_path))
    disk.fill()
    check_cli_failure(command, hubmirror(*args))
    disk.release()
    check_cli_recovers(command, args)


def test_cli_on_a_full_disk_while_a_server_has_the_catalog_open(disk: Disk, hub: FakeHub, tmp_path: Path) -> None:
    src = cli_setup(disk, hub, tmp_path)
    s = Server(disk.path, "--offline")
    try:
        assert get(s.url, "/acme/existing/resolve/main/config.json").status == 200
        disk.fill()
        for command in ("sync --json", "import --json", "import"):
            check_cli_failure(command, hubmirror(*cli_args(command, disk.path, hub, src)))
        disk.release()
        for command in ("sync --json", "import --json"):
            check_cli_recovers(command, cli_args(command, disk.path, hub, src))
    finally:
        s.stop()


@pytest.mark.parametrize("command", ["sync --json", "import --json"])
def test_cli_json_into_a_new_data_dir_on_a_full_disk(disk: Disk, hub: FakeHub, tmp_path: Path, command: str) -> None:
    hub.commit("acme/cli", {"config.json": b'{"cli": 1}\n'})
    src = write_folder(tmp_path / "src", {"config.json": b"{}"})
    data = str(disk.path / "new")
    args = {
        "sync --json": ["sync", "acme/cli", "--data", data, "--upstream", hub.url, "--json"],
        "import --json": ["import", "acme/imp", str(src), "--data", data, "--json"],
    }[command]
    disk.fill()
    assert_failed_for_disk(hubmirror(*args), f"{command} into a new data dir")
    disk.release()
    p = hubmirror(*args)
    assert p.returncode == 0 and json.loads(p.stdout)["status"] in ("synced", "committed"), (p.stdout, p.stderr)


# -- 5. starting on a full disk -----------------------------------------------------------------


def test_serve_on_a_full_disk_with_an_existing_catalog_starts_cleanly_or_refuses_in_one_line(
    disk: Disk, tmp_path: Path, record_property: Any
) -> None:
    files = small_repo()
    commit = import_repo(disk.path, "acme/small", write_folder(tmp_path / "src", files))
    disk.fill()
    try:
        s = Server(disk.path, "--offline")
    except RuntimeError as e:  # it exited: a clear one-line error, no traceback
        out = str(e)
        record_property("outcome", "refused")
        assert "Traceback" not in out, out[-6000:]
        errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "disk" in errors[0].lower(), out[-6000:]
        noise = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("error: ")
                 and " INFO " not in ln]
        assert noise == [], out[-6000:]  # log lines at most, then the one error line
        return
    record_property("outcome", "served")
    try:
        for p, want in files.items():
            g = get(s.url, f"/acme/small/resolve/main/{p}")
            assert (g.status, g.complete, g.body == want) == (200, True, True), (p, g.status)
        assert raw(s.url, "GET", "/api/models/acme/small").json()["sha"] == commit
    finally:
        s.stop()
    log = s.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-6000:]
