"""Declared mirrors: config file and CLI declarations, the scheduler, the webhook, check-update, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes.hub import FakeHub
from helpers import Server, hubmirror_env, raw, run_client

HM = [sys.executable, "-m", "hubmirror"]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=50).start()
    yield h
    h.stop()


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def commit_of(server: Server, repo: str, rev: str = "main") -> str | None:
    r = raw(server.url, "HEAD", f"/{repo}/resolve/{rev}/config.json")
    return r.headers.get("x-repo-commit") if r.status == 200 else None


def test_config_declared_mirror_is_synced_by_the_scheduler_and_status_tells(hub: FakeHub, tmp_path: Path) -> None:
    c1 = hub.commit("acme/sched", {"config.json": b'{"v": 1}', "w.bin": os.urandom(10_000)})
    c0 = hub.commit("acme/sched", {"config.json": b'{"v": "tag"}'}, branch="rel")
    hub.tag("acme/sched", "v1", c0)
    cfg = tmp_path / "hm.toml"
    cfg.write_text(f'''
upstream = "{hub.url}"
scheduler_tick = 0.2
upstream_backoff = 0.01

[[mirrors]]
repo = "acme/sched"
revisions = ["main", "v*"]
schedule = "10s"
''')
    data = tmp_path / "data"
    s = Server(data, "--config", str(cfg))
    try:
        wait_for(lambda: commit_of(s, "acme/sched") == c1)
        assert commit_of(s, "acme/sched", "v1") == c0
        # upstream moves; the schedule (10 s + up to 1 s of jitter) picks it up
        c2 = hub.commit("acme/sched", {"config.json": b'{"v": 2}', "w.bin": os.urandom(10_000)})
        wait_for(lambda: commit_of(s, "acme/sched") == c2, timeout=25)
        p = subprocess.run([*HM, "--config", str(cfg), "status", "--data", str(data), "--json"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)[0]
        assert st["repo_id"] == "acme/sched" and st["source"] == "config" and st["schedule"] == "10s"
        assert st["state"]["main"] == {"mirrored": c2, "upstream": c2, "up_to_date": True}
        assert st["last_sync"] and st["next_sync"] and st["last_error"] is None
        p = subprocess.run([*HM, "--config", str(cfg), "status", "acme/sched", "--data", str(data)],
                           capture_output=True, text=True)
        assert p.returncode == 0 and "schedule 10s" in p.stdout and "schedule synced" in p.stdout
        # a repo deleted upstream: the error shows in status, content is still served
        hub.delete_repo("acme/sched")
        wait_for(lambda: "not found" in (json.loads(subprocess.run(
            [*HM, "--config", str(cfg), "status", "--data", str(data), "--json"], capture_output=True, text=True
        ).stdout)[0]["last_error"] or ""), timeout=25)
        assert commit_of(s, "acme/sched") == c2
        st = json.loads(subprocess.run([*HM, "--config", str(cfg), "status", "--data", str(data), "--json"],
                                       capture_output=True, text=True).stdout)[0]
        assert st["gone_upstream_since"] and "gone upstream" in st["last_error"]
    finally:
        s.stop()


def test_webhook_triggers_a_sync_at_once(hub: FakeHub, tmp_path: Path) -> None:
    c1 = hub.commit("acme/hooked", {"config.json": b'{"v": 1}'})
    data = tmp_path / "data"
    env = {"HUBMIRROR_WEBHOOK_SECRET": "s3cret", "HUBMIRROR_SCHEDULER_TICK": "0.2"}
    p = subprocess.run([*HM, "mirror", "add", "acme/hooked", "--schedule", "1d", "--data", str(data)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    s = Server(data, "--upstream", hub.url, env=env)
    try:
        wait_for(lambda: commit_of(s, "acme/hooked") == c1)  # first sync right after declaring
        c2 = hub.commit("acme/hooked", {"config.json": b'{"v": 2}'})
        payload = {"event": {"action": "update", "scope": "repo.content"},
                   "repo": {"type": "model", "name": "acme/hooked", "headSha": c2}}
        body = json.dumps(payload).encode()
        bad = raw(s.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "wrong", "Content-Type": "application/json"}, body)
        assert bad.status == 401
        none = raw(s.url, "POST", "/api/hooks/hub", {"Content-Type": "application/json"}, body)
        assert none.status == 401
        ok = raw(s.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "s3cret", "Content-Type": "application/json"}, body)
        assert ok.status == 202 and ok.json()["status"] == "queued"
        wait_for(lambda: commit_of(s, "acme/hooked") == c2, timeout=10)
        other = dict(payload, repo={"type": "model", "name": "acme/not-declared"})
        r = raw(s.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "s3cret"}, json.dumps(other).encode())
        assert r.status == 200 and r.json()["status"] == "ignored"
        r = raw(s.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "s3cret"}, b"{not json")
        assert r.status == 400
        r = raw(s.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "s3cret"}, json.dumps({"repo": {"name": "../x"}}).encode())
        assert r.status == 400 and r.headers["x-error-code"] == "InvalidRepoId"
    finally:
        s.stop()


def test_webhooks_are_off_without_a_secret(tmp_path: Path) -> None:
    s = Server(tmp_path / "data")
    try:
        r = raw(s.url, "POST", "/api/hooks/hub", {}, b"{}")
        assert r.status == 403 and "webhook_secret" in r.json()["error"]
    finally:
        s.stop()


def test_check_update_reports_without_downloading(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit("acme/chk", {"config.json": b'{"v": 1}', "a.txt": b"a", "b.txt": b"b"})
    data = tmp_path / "data"
    p = subprocess.run([*HM, "sync", "acme/chk", "--data", str(data), "--upstream", hub.url], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    s = Server(data, "--upstream", hub.url, env={"HUBMIRROR_PROXY__BRANCH_TTL": "0"})  # no caching of the answer
    try:
        r = raw(s.url, "GET", "/api/mirror/models/acme/chk/check-update").json()
        assert r["update_available"] is False and r["files_changed"] == 0
        assert r["mirrored_commit"] == r["upstream_commit"]
        c2 = hub.commit("acme/chk", {"config.json": b'{"v": 2}', "a.txt": b"a", "c.txt": b"c"})
        hub.reset_counters()
        r = raw(s.url, "GET", "/api/mirror/models/acme/chk/check-update").json()
        assert r["update_available"] is True and r["upstream_commit"] == c2
        assert r["files_changed"] == 3  # config.json modified, b.txt removed, c.txt added
        assert r["upstream_last_modified"].endswith("Z")
        assert hub.file_bytes("acme/chk") == 0
        assert commit_of(s, "acme/chk") == r["mirrored_commit"]  # nothing moved
        assert raw(s.url, "GET", "/api/mirror/models/acme/nope/check-update").headers["x-error-code"] == "RepoNotFound"
    finally:
        s.stop()


def test_mirror_cli_add_list_remove_and_bad_input(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path / "data")]
    p = subprocess.run([*HM, "mirror", "add", "acme/a", "--revision", "main", "--revision", "v*", "--include", "*.json",
                        "--schedule", "*/15 * * * *", *data], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*HM, "mirror", "add", "acme/b", "--repo-type", "dataset", "--disabled", *data],
                       capture_output=True, text=True)
    assert p.returncode == 0
    p = subprocess.run([*HM, "mirror", "list", "--json", *data], capture_output=True, text=True)
    got = {m["repo"]: m for m in json.loads(p.stdout)}
    assert got["acme/a"]["revisions"] == ["main", "v*"] and got["acme/a"]["schedule"] == "*/15 * * * *"
    assert got["acme/b"]["type"] == "dataset" and got["acme/b"]["enabled"] is False
    for bad, needle in [(["acme/c", "--schedule", "sometimes"], "schedule"), (["acme/c", "--revision", "a..b"], "revision"),
                        (["../c"], "repo"), (["acme/c", "--schedule", "1s"], "at least")]:
        p = subprocess.run([*HM, "mirror", "add", *bad, *data], capture_output=True, text=True)
        assert p.returncode == 2 and needle in p.stderr, (bad, p.stderr)
    p = subprocess.run([*HM, "mirror", "remove", "acme/a", *data], capture_output=True, text=True)
    assert p.returncode == 0
    p = subprocess.run([*HM, "mirror", "remove", "acme/a", *data], capture_output=True, text=True)
    assert p.returncode == 1 and "not a declared mirror" in p.stderr
    p = subprocess.run([*HM, "mirror", "list", *data], capture_output=True, text=True)
    assert "acme/a" not in p.stdout and "acme/b" in p.stdout


def test_bad_mirror_in_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "hm.toml"
    cfg.write_text('[[mirrors]]\nrepo = "acme/x"\nschedule = "often"\n')
    p = subprocess.run([*HM, "--config", str(cfg), "mirror", "list", "--data", str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "mirrors.0.schedule" in p.stderr


@pytest.mark.e2e
def test_real_client_through_a_chained_mirror(hub: FakeHub, tmp_path: Path) -> None:
    """A central hubmirror feeding an edge hubmirror: the edge syncs from the central one."""
    files = {"config.json": b'{"v": 1}', "model.safetensors": os.urandom(200_000)}
    c1 = hub.commit("acme/chain", files)
    central_data, edge_data = tmp_path / "central", tmp_path / "edge"
    p = subprocess.run([*HM, "sync", "acme/chain", "--data", str(central_data), "--upstream", hub.url],
                       capture_output=True, text=True, env=hubmirror_env(central_data))
    assert p.returncode == 0, p.stderr
    central = Server(central_data)
    try:
        p = subprocess.run([*HM, "sync", "acme/chain", "--data", str(edge_data), "--upstream", central.url],
                           capture_output=True, text=True, env=hubmirror_env(edge_data))
        assert p.returncode == 0, p.stderr
    finally:
        central.stop()
    edge = Server(edge_data)
    try:
        out = run_client(
            """
            from huggingface_hub import hf_hub_download
            out(open(hf_hub_download("acme/chain", "model.safetensors"), "rb").read().hex())
            """,
            edge.url, tmp_path / "hf",
        )
        assert bytes.fromhex(out) == files["model.safetensors"]
        assert commit_of(edge, "acme/chain") == c1
    finally:
        edge.stop()


def test_jitter_spreads_five_hundred_mirrors() -> None:
    from datetime import datetime

    from hubmirror.model.mirror import MirrorSpec, next_run
    from hubmirror.sync.service import jitter

    now = datetime(2026, 1, 1)
    hourly = [next_run("1h", now) + jitter(MirrorSpec(repo=f"acme/m{i}", schedule="1h")) for i in range(500)]
    assert all(0 <= (t - now).total_seconds() - 3600 <= 300 for t in hourly)  # at most 10%, at most 5 min
    assert len({t.replace(microsecond=0) for t in hourly}) > 200  # not all in the same second
    short = [jitter(MirrorSpec(repo="acme/x", schedule="60s")).total_seconds() for _ in range(200)]
    assert max(short) <= 6 and len(set(short)) > 100
    assert next_run("*/15 * * * *", datetime(2026, 1, 1, 10, 7)) == datetime(2026, 1, 1, 10, 15)
