"""Outgoing webhooks ([[notify]]): signed deliveries to a real receiver, retries, the delivery log,
deliveries that survive kill -9, once-only delivery with two servers on one data dir, disk-low."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from backends import current as backend
from click.testing import CliRunner, Result
from fakes.hub import FakeHub
from fakes.receiver import Receiver
from helpers import Server, free_port

from hubmirror.catalog import Catalog
from hubmirror.cli import access, cli, history, mirrors, notify, repos, serve  # noqa: F401  (the commands)
from hubmirror.config import load_settings
from hubmirror.errors import ConfigError
from hubmirror.events.dispatcher import Dispatcher
from hubmirror.events.settings import NotifySettings
from hubmirror.model.names import RepoRef, RepoType

UPSTREAM_TOKEN = "hf_upstreamSECRETtoken0123456789"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=50).start()
    yield h
    h.stop()


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what}: not met in {timeout} s")


def hm(data: Path, *args: str, cfg: Path | None = None) -> Result:
    """A `hubmirror` command, run in this process (a new interpreter costs seconds on a busy machine)."""
    pre = ["--config", str(cfg)] if cfg else []
    return CliRunner().invoke(cli, [*pre, *args, "--data", str(data)], obj={}, env=backend().env(data))


def log_json(data: Path, cfg: Path | None = None) -> list[dict[str, Any]]:
    """`hubmirror notify log --json`."""
    p = hm(data, "notify", "log", "--json", cfg=cfg)
    assert p.exit_code == 0, p.output
    return list(json.loads(p.stdout))


def delivery_log(data: Path) -> list[dict[str, Any]]:
    """What `notify log --json` prints, read in this process."""
    cat = backend().catalog(data)
    try:
        return cat.delivery_log()
    finally:
        cat.close()


# -- configuration ---------------------------------------------------------------------------------


def test_bad_notify_tables_are_refused_with_a_message_naming_the_key(tmp_path: Path) -> None:
    cases = {
        'url = "ftp://example.com/x"': "notify.0.url",
        'url = "example.com/hook"': "http:// or https://",
        'url = "http://example.com/x#frag"': "fragment",
        'url = "http://example.com/x"\nevents = ["commit-mirrored", "pushed"]': "unknown event 'pushed'",
        'url = "http://example.com/x"\nattempts = 0': "notify.0.attempts",
        'url = "http://example.com/x"\nbogus = 1': "notify.0.bogus",
    }
    for table, expected in cases.items():
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"[[notify]]\n{table}\n")
        with pytest.raises(ConfigError) as e:
            load_settings(cfg)
        assert expected in e.value.message, (table, e.value.message)
    cfg.write_text('[[notify]]\nurl = "http://a.example/x"\nname = "a"\n[[notify]]\nurl = "http://b.example/y"\nname = "a"\n')
    with pytest.raises(ConfigError, match="two \\[\\[notify\\]\\] tables are named 'a'"):
        load_settings(cfg)
    # credentials in the URL are used, never shown: not in the name, the repr or an error
    cfg.write_text('[[notify]]\nurl = "https://bot:pa55word@hooks.example/in?key=k3y"\n')
    s = load_settings(cfg)
    assert s.notify[0].name == "https://hooks.example/in?..."
    assert "pa55word" not in repr(s) and "k3y" not in repr(s)
    assert s.notify[0].events == ["commit-mirrored", "sync-failed", "repo-gone", "tag-repointed", "scrub-corrupt",
                                  "disk-low", "hook-failed"]
    cfg.write_text('[[notify]]\nurl = "https://bot:pa55word@hooks.example/in"\nevents = ["nope"]\n')
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert "pa55word" not in e.value.message


# -- delivery ----------------------------------------------------------------------------------------


def test_signed_webhooks_are_retried_logged_and_filtered(hub: FakeHub, tmp_path: Path) -> None:
    c1 = hub.commit("acme/notified", {"config.json": b'{"v": 1}', "w.bin": b"x" * 5000})
    elsewhere = Receiver().start()  # another origin: a redirect there must not be followed

    def to_elsewhere(n: int) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": f"{elsewhere.url}/stolen"})

    rx = Receiver(answers={"/hook": [500, 500, 200], "/moved": to_elsewhere, "/found": [302]}).start()
    cfg = tmp_path / "hm.toml"
    cfg.write_text(f'''
upstream = "{hub.url}"
upstream_token = "{UPSTREAM_TOKEN}"
scheduler_tick = 0.2
upstream_backoff = 0.01
upstream_retries = 0

[[mirrors]]
repo = "acme/notified"
schedule = "1d"

[[mirrors]]
repo = "acme/never-existed"
schedule = "1d"

[[notify]]
name = "main"
url = "http://bot:pa55word@127.0.0.1:{rx.port}/hook?key=k3y"
secret = "s3cret"
backoff = 0.3

[[notify]]
name = "failures"
url = "{rx.url}/failures"
events = ["sync-failed"]

[[notify]]
name = "moved"
url = "{rx.url}/moved"
events = ["commit-mirrored"]
backoff = 0.3

[[notify]]
name = "found"
url = "{rx.url}/found"
events = ["commit-mirrored"]
''')
    data = tmp_path / "data"
    s = Server(data, "--config", str(cfg))
    try:
        ok = wait_for(lambda: [r for r in rx.on("/hook") if r.status == 200 and r.headers["X-Hubmirror-Event"]
                               == "commit-mirrored"], what="commit-mirrored delivered")
        tries = [r for r in rx.on("/hook") if r.headers["X-Hubmirror-Event"] == "commit-mirrored"]
        assert [r.status for r in tries] == [500, 500, 200]
        assert [r.headers["X-Hubmirror-Attempt"] for r in tries] == ["1", "2", "3"]
        assert len({r.headers["X-Hubmirror-Delivery"] for r in tries}) == 1  # one delivery, three attempts
        assert len({r.body for r in tries}) == 1  # the same bytes each time
        assert tries[1].at - tries[0].at >= 0.25 and tries[2].at - tries[1].at >= 0.5  # backoff, doubling
        r = ok[0]
        assert r.signed_by("s3cret") and not r.signed_by("wrong")
        assert abs(int(r.headers["X-Hubmirror-Timestamp"]) - time.time()) < 60
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:pa55word").decode()
        body = r.json()
        assert body["event"] == "commit-mirrored" and body["repo_id"] == "acme/notified"
        assert body["repo_type"] == "model" and body["revision"] == "main" and body["ref"] == "refs/heads/main"
        assert body["commit"] == c1 and body["old_commit"] is None and body["changed_files"] == 2
        assert body["delivery"] == r.headers["X-Hubmirror-Delivery"] and body["mirror"] == s.url
        # the declared mirror that does not exist upstream: sync-failed, to "main" and "failures" only
        failed = wait_for(lambda: rx.on("/failures"), what="sync-failed delivered")
        assert failed[0].json()["event"] == "sync-failed" and failed[0].json()["repo_id"] == "acme/never-existed"
        assert "X-Hubmirror-Signature" not in failed[0].headers  # no secret, no signature
        assert all(r.headers["X-Hubmirror-Event"] == "sync-failed" for r in rx.on("/failures"))
        wait_for(lambda: any(r.headers["X-Hubmirror-Event"] == "sync-failed" and r.status == 200
                             for r in rx.on("/hook")), what="sync-failed to main")
        # redirects: a 307 to another origin and a 302 are not followed, and not retried
        wait_for(lambda: {d["target"]: d for d in delivery_log(data)}.get("moved", {}).get("status") == "failed",
                 what="moved given up")
        time.sleep(1.0)
        assert len(rx.on("/moved")) == 1 and len(rx.on("/found")) == 1 and elsewhere.received == []
        # nothing any receiver got holds the upstream token
        for got in rx.received:
            assert UPSTREAM_TOKEN not in got.body.decode() + json.dumps(got.headers)
        # the delivery log
        rows = log_json(data, cfg)
        main = [d for d in rows if d["target"] == "main" and d["event"] == "commit-mirrored"]
        assert len(main) == 1
        assert main[0]["status"] == "delivered" and main[0]["attempts"] == 3 and main[0]["last_status"] == 200
        assert main[0]["delivered_at"] and main[0]["url"] == f"http://127.0.0.1:{rx.port}/hook?..."
        by_target = {d["target"]: d for d in rows}
        assert "redirect to another origin" in by_target["moved"]["last_error"]
        assert by_target["found"]["status"] == "failed" and by_target["found"]["last_status"] == 302
        status = hm(data, "status", cfg=cfg).stdout
        assert "webhooks in the last 24 h:" in status
        # credentials and the query never reach the log, the delivery log or the server's log
        for out in (json.dumps(rows), status, s.log.read_text()):
            assert "pa55word" not in out and "k3y" not in out
    finally:
        s.stop()
        rx.stop()
        elsewhere.stop()


def test_a_queued_delivery_survives_kill_9_and_is_delivered_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: every attempt fails to connect
    cfg = tmp_path / "hm.toml"
    cfg.write_text(f'[[notify]]\nname = "ops"\nurl = "http://127.0.0.1:{port}/in"\nbackoff = 1.0\nsecret = "k"\n')
    data = tmp_path / "data"
    s = Server(data, "--config", str(cfg))
    rx: Receiver | None = None
    try:
        p = hm(data, "notify", "test", cfg=cfg)
        assert p.exit_code == 0 and "queued test event" in p.stdout, p.output
        first = wait_for(lambda: [d for d in delivery_log(data) if d["attempts"] >= 1 and d["status"] == "queued"],
                         what="a failed first attempt")
        assert "cannot connect" in first[0]["last_error"]
        s.proc.kill()  # kill -9: nothing is handed back
        s.proc.wait()
        s.stop()
        rx = Receiver(port).start()
        s = Server(data, "--config", str(cfg))
        got = wait_for(lambda: rx.on("/in"), what="delivered after the restart")
        time.sleep(1.5)  # more than a tick of each server: time for a duplicate, if there were one
        assert len(rx.on("/in")) == 1 and got[0].status == 200 and got[0].signed_by("k")
        assert got[0].json()["event"] == "test"
        (row,) = delivery_log(data)
        assert row["status"] == "delivered" and row["attempts"] >= 2 and row["delivery"] == got[0].json()["delivery"]
        text = hm(data, "notify", "log", cfg=cfg).stdout
        assert "test" in text and "delivered" in text and f"attempts {row['attempts']} last 200" in text
    finally:
        s.stop()
        if rx is not None:
            rx.stop()


def test_two_servers_on_one_data_dir_deliver_each_event_once(tmp_path: Path) -> None:
    rx = Receiver(delay=0.03).start()
    cfg = tmp_path / "hm.toml"
    cfg.write_text(f'[[notify]]\nname = "ops"\nurl = "{rx.url}/in"\nbackoff = 0.2\n')
    data = tmp_path / "data"
    a = Server(data, "--config", str(cfg))
    b = Server(data, "--config", str(cfg))
    try:
        cat = backend().catalog(data)
        try:
            ids = [cat.emit_event("test", None, n=i) for i in range(40)]
        finally:
            cat.close()
        wait_for(lambda: len(rx.received) >= 40, what="40 deliveries")
        time.sleep(1.5)  # more than a tick of each server: time for a duplicate, if there were one
        got = sorted(r.json()["event_id"] for r in rx.received)
        assert got == sorted(ids)  # each event once, none twice
        rows = delivery_log(data)
        assert len(rows) == 40 and all(d["status"] == "delivered" and d["attempts"] == 1 for d in rows)
    finally:
        a.stop()
        b.stop()
        rx.stop()


# -- the compare-and-set claims, on SQLite and PostgreSQL ------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.sqlite3'}"
    return str(request.getfixturevalue("postgres_database"))


def test_racing_dispatchers_take_each_event_delivery_and_hook_run_once(catalog_url: str) -> None:
    first = Catalog(catalog_url)
    first.migrate()
    ref = RepoRef(RepoType.MODEL, "acme/raced")
    # 60 events; pairs name the same commit (two revisions moved to it): one hook run per commit
    ids = [first.emit_event("commit-mirrored", ref, revision=f"r{i}", commit=f"{i // 2:040x}") for i in range(60)]
    first.close()

    def plan(ev: Any) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        return ([{"target": "a", "url": "http://a/"}, {"target": "b", "url": "http://b/"}],
                [{"hook": "h", "revision": ev.payload["revision"], "commit": ev.payload["commit"], "old_commit": None,
                  "is_check": False}])

    taken: list[int] = []
    claimed: list[int] = []
    runs: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker() -> None:
        cat = Catalog(catalog_url)
        me = f"w{threading.get_ident()}"
        try:
            barrier.wait()
            for _ in range(5):
                got = cat.fan_out(cat.pending_events(limit=25), plan, max_age=timedelta(days=1))
                mine = cat.claim_deliveries(me, 60, limit=7)
                hooks = cat.claim_hook_runs(me, 60, limit=3)
                with lock:
                    taken.extend(e.id for e in got)
                    claimed.extend(d.id for d in mine)
                    runs.extend(r.commit for r in hooks)
            while mine := cat.claim_deliveries(me, 60, limit=7):
                with lock:
                    claimed.extend(d.id for d in mine)
            while hooks := cat.claim_hook_runs(me, 60, limit=3):
                with lock:
                    runs.extend(r.commit for r in hooks)
        finally:
            cat.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(ids)  # every event fanned out exactly once
    assert len(claimed) == 120 and len(set(claimed)) == 120  # every delivery claimed exactly once
    assert sorted(runs) == [f"{i:040x}" for i in range(30)]  # every hook run once, one per commit


# -- disk-low ------------------------------------------------------------------------------------------


class _Disk:
    def __init__(self) -> None:
        self.free = 10 << 30

    def free_bytes(self) -> int:
        return self.free


def test_disk_low_fires_once_per_crossing(tmp_path: Path) -> None:
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    cat.migrate()
    disk = _Disk()
    target = NotifySettings(url="http://127.0.0.1:9/x", events=["disk-low"])

    def dispatcher() -> Dispatcher:  # each as another process would be
        return Dispatcher(cat, disk, notify=[target], hooks=[], data=tmp_path,  # type: ignore[arg-type]
                          endpoint="http://mirror", disk_low=2 << 30)

    def fired() -> int:
        return len([e for e in cat.pending_events(1000)])

    async def go() -> None:
        one, two = dispatcher(), dispatcher()
        await one.check_disk()
        assert fired() == 0
        disk.free = 1 << 30
        for _ in range(3):
            await one.check_disk()
            await two.check_disk()
        assert fired() == 1  # once, not every tick, not once per process
        disk.free = (2 << 30) + 1  # above, but within 5%: still low (no flapping)
        await one.check_disk()
        disk.free = 1 << 30
        await two.check_disk()
        assert fired() == 1
        disk.free = 3 << 30  # recovered, then low again: a second crossing
        await one.check_disk()
        disk.free = 1 << 30
        await two.check_disk()
        assert fired() == 2

    try:
        asyncio.run(go())
        (ev, *_rest) = cat.fan_out(cat.pending_events(), lambda e: ([], []), max_age=timedelta(days=1))
        assert ev.kind == "disk-low" and ev.payload == {"free_bytes": 1 << 30, "threshold_bytes": 2 << 30}
    finally:
        cat.close()
