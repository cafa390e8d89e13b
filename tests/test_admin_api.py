"""The admin HTTP API against a real server: users, groups, tokens, mirrors, pins, gc and the
audit log driven over HTTP with an admin token made by the CLI; every refusal (no token, a
read token, an address outside admin_allow_ips) a 401/403 that is audited; hostile bodies a
400/413 with a JSON error; and a token seen nowhere but in the answer that created it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.hub import FakeHub
from helpers import Reply, Server, raw

from hubmirror.store import LocalBlobStore

ADMIN_ACTOR = "user:root (token root-admin)"


def hm(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubmirror", *args, "--data", str(data)], check=False,
                          capture_output=True, text=True, env={**os.environ, "HUBMIRROR_UPSTREAM_BACKOFF": "0.01"},
                          timeout=120)


def cli_token(data: Path, name: str, user: str, role: str) -> str:
    p = hm(data, "token", "create", name, "--user", user, "--role", role, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["role"] == role
    return str(doc["token"])


@dataclass
class Env:
    hub: FakeHub
    data: Path
    server: Server
    admin: str
    reader: str
    replies: list[tuple[str, Reply]] = field(default_factory=list)  # (what, reply) of every call
    created: dict[str, str] = field(default_factory=dict)  # token name -> token, made through the API

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = "admin",
             ctype: str | None = "application/json", raw_body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {self.admin if token == 'admin' else self.reader if token == 'reader' else token}"
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        if data is not None and ctype is not None:
            h["Content-Type"] = ctype
        r = raw(self.server.url, method, path, h, data)
        self.replies.append((f"{method} {path}", r))
        assert r.status < 500, (method, path, r)
        return r

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = self.call(method, path, body)
        assert r.status == status, (method, path, r)
        assert r.headers["content-type"].startswith("application/json")
        return r.json()

    def audit(self) -> list[dict[str, Any]]:
        return self.ok("GET", "/api/admin/audit?limit=10000")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    hub = FakeHub(page_size=50).start()
    hub.commit("acme/declared", {"a.txt": b"declared"})
    base = tmp_path_factory.mktemp("admin")
    data = base / "data"
    cfg = base / "hubmirror.toml"
    cfg.write_text('[[mirrors]]\nrepo = "acme/declared"\nschedule = "1d"\n')
    assert hm(data, "user", "add", "root", "--group", "admins").returncode == 0
    assert hm(data, "user", "add", "bob").returncode == 0
    admin = cli_token(data, "root-admin", "root", "admin")
    reader = cli_token(data, "bob-read", "bob", "read")
    server = Server(data, "--upstream", hub.url, env={"HUBMIRROR_CONFIG": str(cfg), "HUBMIRROR_UPSTREAM_BACKOFF": "0.01",
                                                     "HUBMIRROR_SCHEDULER_TICK": "0.2"})
    e = Env(hub, data, server, admin, reader)
    try:
        yield e
    finally:
        server.stop()
        hub.stop()


def new_events(env: Env, before: int) -> list[dict[str, Any]]:
    return env.audit()[before:]


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- refusals --------------------------------------------------------------------------------


def test_no_token_read_token_and_bad_token_are_refused_and_audited(env: Env) -> None:
    before = len(env.audit())
    r = env.call("GET", "/api/admin/users", token=None)
    assert r.status == 401 and r.json() == {"error": "Invalid user token."}
    assert r.headers["x-error-code"] == "Unauthorized"
    r = env.call("POST", "/api/admin/users", {"name": "mallory"}, token="reader")
    assert r.status == 403 and "admin role" in r.json()["error"]
    assert r.headers["x-error-code"] == "Forbidden"
    r = env.call("DELETE", "/api/admin/tokens/root-admin", token="hm_" + "A" * 43)  # well-formed, unknown
    assert r.status == 401 and "error" in r.json()
    r = env.call("GET", "/api/admin/nowhere", token=None)  # unknown routes are no way around the check
    assert r.status == 401
    assert "mallory" not in [u["name"] for u in env.ok("GET", "/api/admin/users")]
    denied = [e for e in new_events(env, before) if e["action"] == "admin-denied"]
    assert [(e["actor"], e["detail"]["method"], e["detail"]["path"]) for e in denied] == [
        ("anonymous", "GET", "/api/admin/users"),
        ("user:bob (token bob-read)", "POST", "/api/admin/users"),
        ("anonymous", "DELETE", "/api/admin/tokens/root-admin"),
        ("anonymous", "GET", "/api/admin/nowhere"),
    ]
    assert all(e["client"] == "127.0.0.1" for e in denied)
    assert "role read" in denied[1]["detail"]["reason"]
    text = json.dumps(denied)
    assert env.reader not in text and "Bearer" not in text and "hm_AAAA" not in text
    assert denied[2]["detail"]["reason"] == "Invalid credentials in Authorization header"  # the gate's words


def test_admin_token_from_an_address_outside_admin_allow_ips_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert hm(data, "user", "add", "root").returncode == 0
    admin = cli_token(data, "root-admin", "root", "admin")
    s = Server(data, "--offline", env={"HUBMIRROR_ACCESS__ADMIN_ALLOW_IPS": '["10.9.9.9/32"]'})
    try:
        for method, path in [("GET", "/api/admin/users"), ("POST", "/api/admin/gc")]:
            r = raw(s.url, method, path, {"Authorization": f"Bearer {admin}"})
            assert r.status == 403 and "admin_allow_ips" in r.json()["error"], r
            assert r.headers["x-error-code"] == "Forbidden"
        # the token itself is good: it reads
        assert raw(s.url, "GET", "/api/whoami-v2", {"Authorization": f"Bearer {admin}"}).status == 200
    finally:
        s.stop()
    p = hm(data, "audit", "--json")
    denied = [e for e in json.loads(p.stdout) if e["action"] == "admin-denied"]
    assert [(e["actor"], e["client"], e["detail"]["method"], e["detail"]["path"]) for e in denied] == [
        (ADMIN_ACTOR, "127.0.0.1", "GET", "/api/admin/users"),
        (ADMIN_ACTOR, "127.0.0.1", "POST", "/api/admin/gc"),
    ]
    assert admin not in p.stdout and admin not in s.log.read_text()


# -- users, groups, tokens -------------------------------------------------------------------


def test_users_groups_and_tokens_lifecycle(env: Env) -> None:
    env.hub.commit("acme/pub", {"config.json": b'{"pub": 1}'})
    before = len(env.audit())
    u = env.ok("POST", "/api/admin/users", {"name": "alice", "groups": ["ml"]}, status=201)
    assert u["status"] == "created" and u["name"] == "alice" and u["groups"] == ["ml"]
    assert env.call("POST", "/api/admin/users", {"name": "alice"}).status == 409
    g = env.ok("POST", "/api/admin/users/alice/groups", {"add": ["ops"], "remove": ["ml", "nope"]})
    assert g["groups"] == ["ops"]
    assert {c["group"]: c["change"] for c in g["changes"]} == {"ops": "added", "ml": "removed", "nope": "not a member"}
    assert env.ok("GET", "/api/admin/groups")["ops"] == ["alice"]
    assert "alice" in [x["name"] for x in env.ok("GET", "/api/admin/users")]

    t = env.ok("POST", "/api/admin/tokens", {"name": "alice-ci", "user": "alice", "role": "read", "expires": "90d",
                                             "repos": ["acme/*"]}, status=201)
    token = t["token"]
    env.created["alice-ci"] = token
    assert t["status"] == "created" and t["role"] == "read" and t["repos"] == ["acme/*"] and t["expires_at"]
    assert env.replies[-1][1].headers["cache-control"] == "no-store"
    listed = env.ok("GET", "/api/admin/tokens?user=alice")
    assert [x["name"] for x in listed] == ["alice-ci"] and "token" not in listed[0]
    bearer = {"Authorization": f"Bearer {token}"}
    who = raw(env.server.url, "GET", "/api/whoami-v2", bearer)
    assert who.status == 200 and who.json()["name"] == "alice"
    assert [o["name"] for o in who.json()["orgs"]] == ["ops"]
    info = raw(env.server.url, "GET", "/api/models/acme/pub", bearer)  # a read, pulled through
    assert info.status == 200 and info.json()["id"] == "acme/pub"
    assert raw(env.server.url, "GET", "/acme/pub/resolve/main/config.json", bearer).body == b'{"pub": 1}'
    # the token works for reads, not for the admin API
    assert env.call("GET", "/api/admin/users", token=token).status == 403

    r = env.ok("DELETE", "/api/admin/tokens/alice-ci")
    assert r["status"] == "revoked" and r["state"] == "revoked"
    assert raw(env.server.url, "GET", "/api/whoami-v2", bearer).status == 401  # at once, not after the cache
    assert raw(env.server.url, "GET", "/acme/pub/resolve/main/config.json", bearer).status == 401
    assert env.ok("DELETE", "/api/admin/tokens/alice-ci")["status"] == "already revoked"
    assert env.call("DELETE", "/api/admin/tokens/nobody").status == 404

    t2 = env.ok("POST", "/api/admin/tokens", {"name": "alice-2", "user": "alice"}, status=201)
    env.created["alice-2"] = t2["token"]
    assert t2["role"] == "read" and t2["expires_at"] is None and t2["repos"] is None
    assert raw(env.server.url, "GET", "/api/whoami-v2", {"Authorization": f"Bearer {t2['token']}"}).status == 200
    gone = env.ok("DELETE", "/api/admin/users/alice")
    assert gone == {"status": "removed", "name": "alice", "tokens_deleted": ["alice-2", "alice-ci"]}
    assert raw(env.server.url, "GET", "/api/whoami-v2", {"Authorization": f"Bearer {t2['token']}"}).status == 401
    assert env.call("DELETE", "/api/admin/users/alice").status == 404
    assert env.call("POST", "/api/admin/tokens", {"name": "x", "user": "alice"}).status == 404

    events = [e for e in new_events(env, before) if e["action"] != "admin-denied"]
    assert [e["action"] for e in events] == ["user-add", "group-add", "group-remove", "token-create", "token-revoke",
                                             "token-create", "user-remove"]
    assert [(e["actor"], e["detail"]["path"]) for e in new_events(env, before) if e["action"] == "admin-denied"] == [
        ("user:alice (token alice-ci)", "/api/admin/users")]
    assert all(e["actor"] == ADMIN_ACTOR and e["client"] == "127.0.0.1" for e in events)
    assert token not in json.dumps(events) and t2["token"] not in json.dumps(events)


# -- mirrors ---------------------------------------------------------------------------------


def test_mirrors_add_freeze_sync_remove(env: Env) -> None:
    c1 = env.hub.commit("acme/followed", {"a.txt": b"one"})
    before = len(env.audit())
    spec = {"repo": "acme/followed", "revisions": ["main"], "schedule": "1d", "include": ["*.txt"]}
    m = env.ok("POST", "/api/admin/mirrors", spec, status=201)
    assert m["status"] == "created" and m["source"] == "api" and m["schedule"] == "1d" and m["type"] == "model"
    m = env.ok("POST", "/api/admin/mirrors", {**spec, "keep_last": 3})
    assert m["status"] == "updated" and m["keep_last"] == 3
    listed = {x["repo"]: x for x in env.ok("GET", "/api/admin/mirrors")}
    assert listed["acme/followed"]["source"] == "api" and "status" in listed["acme/followed"]
    assert listed["acme/declared"]["source"] == "config"

    r = env.ok("POST", "/api/admin/mirrors/models/acme/followed/sync", status=202)
    assert r == {"status": "queued", "repo_id": "acme/followed", "repo_type": "model"}
    wait_for("the sync", lambda: {x["repo"]: x for x in env.ok("GET", "/api/admin/mirrors")}
             ["acme/followed"]["status"]["upstream"].get("main") == c1)

    assert env.ok("POST", "/api/admin/mirrors/models/acme/followed/freeze", {})["frozen"] is True
    r = env.call("POST", "/api/admin/mirrors/models/acme/followed/sync")
    assert r.status == 409 and r.headers["x-error-code"] == "MirrorFrozen"
    assert env.ok("POST", "/api/admin/mirrors/models/acme/followed/freeze", {"undo": True})["frozen"] is False
    removed = env.ok("DELETE", "/api/admin/mirrors/models/acme/followed")
    assert removed["status"] == "removed" and removed["repo"] == "acme/followed"
    assert env.call("DELETE", "/api/admin/mirrors/models/acme/followed").status == 404
    assert env.call("POST", "/api/admin/mirrors/models/acme/followed/sync").status == 404
    assert raw(env.server.url, "GET", "/acme/followed/resolve/main/a.txt").body == b"one"  # stays served

    # a mirror of the config file is changed there, not through the API
    for method, path, body in [("DELETE", "/api/admin/mirrors/models/acme/declared", None),
                               ("POST", "/api/admin/mirrors", {"repo": "acme/declared", "schedule": "1h"}),
                               ("POST", "/api/admin/mirrors/models/acme/declared/freeze", {})]:
        r = env.call(method, path, body)
        assert r.status == 409 and "declared in the config file" in r.json()["error"], (method, path, r)
    assert "acme/declared" in [x["repo"] for x in env.ok("GET", "/api/admin/mirrors")]

    # a disabled mirror is not synced on demand
    env.ok("POST", "/api/admin/mirrors", {"repo": "acme/later", "type": "dataset", "enabled": False}, status=201)
    r = env.call("POST", "/api/admin/mirrors/datasets/acme/later/sync", {})
    assert r.status == 409 and "disabled" in r.json()["error"]
    env.ok("DELETE", "/api/admin/mirrors/datasets/acme/later")

    events = [e for e in new_events(env, before) if e["actor"] == ADMIN_ACTOR]
    assert [e["action"] for e in events] == ["mirror-add", "mirror-update", "sync-requested", "freeze", "unfreeze",
                                             "mirror-remove", "mirror-add", "mirror-remove"]
    assert events[0]["detail"]["repo_id"] == "acme/followed" and events[0]["detail"]["spec"]["include"] == ["*.txt"]
    assert events[2]["repo"] == "acme/followed" and events[2]["detail"]["trigger"] == "api"
    assert all(e["client"] == "127.0.0.1" for e in events)


# -- pins ------------------------------------------------------------------------------------


def test_pins_add_fetch_list_delete(env: Env) -> None:
    files = {"config.json": b'{"v": 1}', "model.safetensors": os.urandom(200_000), "tok.json": b"tok"}
    c1 = env.hub.commit("acme/pinme", files)
    before = len(env.audit())
    assert raw(env.server.url, "GET", "/acme/pinme/resolve/main/config.json").status == 200  # pulled through
    p = env.ok("POST", "/api/admin/pins", {"repo": "acme/pinme", "revision": "main", "note": "prod model"}, status=201)
    assert p["commit"] == c1 and p["created"] is True and p["missing_files"] == 2 and p["fetching"] is True
    wait_for("the pinned files", lambda: any(e["action"] == "pin-complete" for e in new_events(env, before)))
    store = LocalBlobStore(env.data / "blobs")
    for data in files.values():
        assert store.stat(hashlib.sha256(data).hexdigest()) is not None
    pins = [x for x in env.ok("GET", "/api/admin/pins") if x["repo_id"] == "acme/pinme"]
    assert pins == [{"repo_type": "model", "repo_id": "acme/pinme", "commit": c1, "revision": "main",
                     "note": "prod model", "created_at": pins[0]["created_at"]}]
    again = env.ok("POST", "/api/admin/pins", {"repo": "acme/pinme", "type": "model", "revision": c1}, status=201)
    assert again["created"] is False and again["missing_files"] == 0 and again["fetching"] is False
    assert env.call("POST", "/api/admin/pins", {"repo": "acme/absent"}).status == 404
    r = env.call("POST", "/api/admin/pins", {"repo": "acme/pinme", "revision": "nope"})
    assert r.status == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    r = env.ok("DELETE", f"/api/admin/pins/models/acme/pinme/{c1}")
    assert r == {"status": "unpinned", "repo_id": "acme/pinme", "repo_type": "model", "commit": c1}
    assert env.call("DELETE", f"/api/admin/pins/models/acme/pinme/{c1}").status == 404
    assert not [x for x in env.ok("GET", "/api/admin/pins") if x["repo_id"] == "acme/pinme"]
    events = [e for e in new_events(env, before) if e["actor"] == ADMIN_ACTOR]
    assert [e["action"] for e in events] == ["pin", "pin-complete", "pin", "unpin"]
    assert events[1]["detail"]["files_fetched"] == 2 and all(e["repo"] == "acme/pinme" for e in events)


# -- gc and audit ----------------------------------------------------------------------------


def test_gc_dry_run_and_real_run(env: Env) -> None:
    before = len(env.audit())
    dry = env.ok("POST", "/api/admin/gc", {"dry_run": True})
    assert dry["dry_run"] is True and {"commits_removed", "blobs_deleted", "bytes_freed"} <= set(dry)
    real = env.ok("POST", "/api/admin/gc", {"dry_run": False})
    assert real["dry_run"] is False and real["blobs_deleted"] == dry["blobs_deleted"]
    events = [e for e in new_events(env, before) if e["actor"] == ADMIN_ACTOR]
    assert [(e["action"], e["actor"], e["client"]) for e in events] == [
        ("gc-dry-run", ADMIN_ACTOR, "127.0.0.1"), ("gc", ADMIN_ACTOR, "127.0.0.1")]


def test_audit_query(env: Env) -> None:
    assert len(env.ok("GET", "/api/admin/audit?limit=2")) == 2
    recent = env.ok("GET", "/api/admin/audit?since=1d&limit=100")
    assert recent and all({"time", "action", "actor", "client", "repo", "detail"} <= set(e) for e in recent)
    for query, field_name in [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=99999999", "limit"),
                              ("since=forever", "since"), ("since=1d&since=2d", "since"), ("bogus=1", "bogus")]:
        r = env.call("GET", f"/api/admin/audit?{query}")
        assert r.status == 400 and field_name in r.json()["error"], (query, r)


# -- hostile input ---------------------------------------------------------------------------

HOSTILE: list[tuple[str, str, Any, dict[str, Any], int, str]] = [
    # method, path, body (bytes: sent as is), options, status, a word the error must hold
    ("POST", "/api/admin/users", b'{"name": "x"}', {"ctype": "text/plain"}, 400, "Content-Type"),
    ("POST", "/api/admin/users", b'{"name": "x"}', {"ctype": None}, 400, "Content-Type"),
    ("POST", "/api/admin/users", b'{"name": "x"}', {"ctype": "application/x-www-form-urlencoded"}, 400, "Content-Type"),
    ("POST", "/api/admin/users", b"name=x", {}, 400, "JSON"),
    ("POST", "/api/admin/users", b"", {}, 400, "JSON"),
    ("POST", "/api/admin/users", b'{"name": "x"', {}, 400, "JSON"),
    ("POST", "/api/admin/users", b'{"name": "\xff\xfe"}', {}, 400, "JSON"),
    ("POST", "/api/admin/users", b"[" * 5000 + b"]" * 5000, {}, 400, "JSON"),
    ("POST", "/api/admin/users", b'["x"]', {}, 400, "object"),
    ("POST", "/api/admin/users", b"null", {}, 400, "object"),
    ("POST", "/api/admin/users", {"name": 5}, {}, 400, "name"),
    ("POST", "/api/admin/users", {"name": None}, {}, 400, "name"),
    ("POST", "/api/admin/users", {"groups": []}, {}, 400, "name"),
    ("POST", "/api/admin/users", {"name": "x", "groups": "ml"}, {}, 400, "groups"),
    ("POST", "/api/admin/users", {"name": "x", "groups": [1]}, {}, 400, "groups"),
    ("POST", "/api/admin/users", {"name": "x", "admin": True}, {}, 400, "admin"),
    ("POST", "/api/admin/users", {"name": "../x"}, {}, 400, "name"),
    ("POST", "/api/admin/users", {"name": "x" * 10_000}, {}, 400, "name"),
    ("POST", "/api/admin/users?name=x", {"name": "x"}, {}, 400, "query"),
    ("POST", "/api/admin/users/root/groups", {}, {}, 400, "add"),
    ("POST", "/api/admin/users/root/groups", {"add": "ops"}, {}, 400, "add"),
    ("POST", "/api/admin/users/root/groups", {"add": ["bad name"]}, {}, 400, "group"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "role": "god"}, {}, 400, "role"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "role": ["admin"]}, {}, 400, "role"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "expires": 90}, {}, 400, "expires"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "expires": "forever"}, {}, 400, "expires"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "repos": []}, {}, 400, "repos"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "repos": "acme/*"}, {}, 400, "repos"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "repos": ["re:("]}, {}, 400, "pattern"),
    ("POST", "/api/admin/tokens", {"name": "t"}, {}, 400, "user"),
    ("POST", "/api/admin/tokens", {"name": "t", "user": "root", "token": "hm_x"}, {}, 400, "token"),
    ("POST", "/api/admin/mirrors", {}, {}, 400, "repo"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "schedule": "often"}, {}, 400, "schedule"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "schedule": "1s"}, {}, 400, "schedule"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "enabled": "yes"}, {}, 400, "enabled"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "keep_last": "3"}, {}, 400, "keep_last"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "keep_last": 0}, {}, 400, "keep_last"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "revisions": "main"}, {}, 400, "revisions"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "revisions": ["a..b"]}, {}, 400, "revisions"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "type": "models"}, {}, 400, "type"),
    ("POST", "/api/admin/mirrors", {"repo": "../x"}, {}, 400, "repo"),
    ("POST", "/api/admin/mirrors", {"repo": "acme/x", "bogus": 1}, {}, 400, "bogus"),
    ("POST", "/api/admin/mirrors/models/acme/declared/freeze", {"undo": "yes"}, {}, 400, "undo"),
    ("POST", "/api/admin/mirrors/models/acme/declared/sync", {"now": True}, {}, 400, "now"),
    ("DELETE", "/api/admin/mirrors/models/..%2Fx", None, {}, 400, "repo id"),
    ("DELETE", "/api/admin/mirrors/models/acme/x", {"force": True}, {}, 400, "body"),
    ("POST", "/api/admin/pins", {"repo": 1}, {}, 400, "repo"),
    ("POST", "/api/admin/pins", {"repo": "acme/x", "type": "thing"}, {}, 400, "type"),
    ("POST", "/api/admin/pins", {"repo": "acme/x", "revision": "a..b"}, {}, 400, "revision"),
    ("POST", "/api/admin/pins", {"repo": "acme/x", "note": 5}, {}, 400, "note"),
    ("POST", "/api/admin/pins", {"repo": "acme/x", "note": "n" * 5000}, {}, 400, "note"),
    ("POST", "/api/admin/gc", {"dry_run": "true"}, {}, 400, "dry_run"),
    ("POST", "/api/admin/gc", {"dry_run": 1}, {}, 400, "dry_run"),
    ("POST", "/api/admin/gc", {"dry_run": True, "force": True}, {}, 400, "force"),
    ("POST", "/api/admin/gc", b"x" * (2 << 20), {}, 413, "too large"),
    ("POST", "/api/admin/users", b'{"name": "' + b"x" * (1 << 20) + b'"}', {}, 413, "too large"),
    ("PUT", "/api/admin/users", {"name": "x"}, {}, 405, "Method"),
    ("GET", "/api/admin/gc", None, {}, 405, "Method"),
    ("GET", "/api/admin/nothing/here", None, {}, 404, "no such admin route"),
]


@pytest.mark.parametrize(("method", "path", "body", "opts", "status", "word"), HOSTILE,
                         ids=[f"{i}-{h[0]}-{h[1].rsplit('/', 1)[-1][:20]}" for i, h in enumerate(HOSTILE)])
def test_hostile_bodies_are_a_clear_400(env: Env, method: str, path: str, body: Any, opts: dict[str, Any],
                                        status: int, word: str) -> None:
    raw_body = body if isinstance(body, bytes) else None
    r = env.call(method, path, None if raw_body is not None else body, raw_body=raw_body,
                 ctype=opts.get("ctype", "application/json"))
    assert r.status == status, r
    assert r.headers["content-type"].startswith("application/json")
    assert word.lower() in r.json()["error"].lower(), r


def test_hostile_bodies_changed_nothing(env: Env) -> None:
    users = [u["name"] for u in env.ok("GET", "/api/admin/users")]
    assert "x" not in users and "t" not in [t["name"] for t in env.ok("GET", "/api/admin/tokens")]
    assert "acme/x" not in [m["repo"] for m in env.ok("GET", "/api/admin/mirrors")]


def test_no_token_anywhere_but_in_its_creation_answer(env: Env) -> None:
    t = env.ok("POST", "/api/admin/tokens", {"name": "root-2", "user": "root", "role": "admin"}, status=201)
    created_by = len(env.replies) - 1
    env.created["root-2"] = t["token"]
    assert env.call("GET", "/api/admin/users", token=t["token"]).status == 200  # an admin token made by the API
    assert raw(env.server.url, "GET", f"/acme/pub/resolve/main/config.json?token={t['token']}").status == 200
    env.ok("DELETE", "/api/admin/tokens/root-2")
    env.ok("GET", "/api/admin/tokens")
    env.ok("GET", "/api/admin/audit?limit=10000")
    secrets = [env.admin, env.reader, *env.created.values()]
    creations = {i for i, (what, r) in enumerate(env.replies) if what == "POST /api/admin/tokens" and r.status == 201}
    assert created_by in creations
    for i, (what, r) in enumerate(env.replies):
        text = r.body.decode("utf-8", "replace") + json.dumps(r.headers)
        for s in secrets:
            if s in text:
                assert i in creations and env.created.get(r.json()["name"]) == s, (what, r)
    log = env.server.log.read_text()
    assert "admin" in log  # the log is there and has the admin calls
    p = hm(env.data, "audit", "--json", "--limit", "100000")
    for s in secrets:
        assert s not in log and s not in p.stdout
