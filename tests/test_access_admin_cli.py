"""Users, groups, tokens and the audit log from the command line (hubmirror.ops behind it): the
whole lifecycle in subprocesses against a temp data dir, a token shown once and found nowhere
afterwards, hostile names, and the 0006 migration on an existing 0005 catalog."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa

from hubmirror.catalog import Catalog
from hubmirror.model.access import Role, is_token, token_hash
from hubmirror.model.names import RepoRef, RepoType

# the commands register on `cli` when cli_access is imported (cli.main imports it); importing it
# here too keeps these tests independent of that line
_ENTRY = "from hubmirror.cli import main; main()"


def hm(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _ENTRY, *args, "--data", str(data)], check=False,
                          capture_output=True, text=True,
                          env={**os.environ, "USER": "tester", "LOGNAME": "tester"}, timeout=120)


def ok(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    p = hm(data, *args)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def js(data: Path, *args: str) -> object:
    return json.loads(ok(data, *args, "--json").stdout)


def catalog(data: Path) -> Catalog:
    return Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")


def everything_stored(data: Path) -> bytes:
    """Every byte under the data dir: the catalog, its WAL and shm files, whatever else is there."""
    return b"".join(p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file())


def utc(iso: str) -> datetime:
    assert iso.endswith("Z"), iso
    return datetime.fromisoformat(iso[:-1])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    ok(d, "user", "list")  # creates and migrates the catalog once, so that parallel calls do not race on it
    return d


def test_lifecycle_token_shown_once_and_stored_nowhere(data: Path) -> None:
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        p = ok(data, *args)
        outputs.extend([p.stdout, p.stderr])
        return p

    run("user", "add", "alice", "--group", "ml", "--group", "research")
    run("user", "add", "bob")
    run("user", "group", "bob", "--add", "ml", "--add", "ops")
    run("user", "group", "alice", "--remove", "research")
    users = json.loads(run("user", "list", "--json").stdout)
    assert [(u["name"], u["groups"]) for u in users] == [("alice", ["ml"]), ("bob", ["ml", "ops"])]
    assert "alice" in run("user", "list").stdout

    # plain output: the token alone on stdout, the explanation on stderr
    p = ok(data, "token", "create", "laptop", "--user", "alice")
    plain = p.stdout.strip()
    assert is_token(plain) and plain not in p.stderr and "shown once" in p.stderr
    # --json: every option
    p = ok(data, "token", "create", "ci", "--user", "bob", "--role", "write", "--expires", "90d",
           "--repo", "acme/*", "--repo", "datasets/acme/*", "--repo", "re:^team-[a-z]+/.*$", "--json")
    created = json.loads(p.stdout)
    assert p.stdout.count(created["token"]) == 1 and created["token"] not in p.stderr
    assert created["status"] == "created" and created["name"] == "ci" and created["user"] == "bob"
    assert created["role"] == "write" and created["state"] == "active"
    assert created["repos"] == ["acme/*", "datasets/acme/*", "re:^team-[a-z]+/.*$"]
    admin = json.loads(ok(data, "token", "create", "root", "--user", "alice", "--role", "admin", "--json").stdout)
    tokens = {"laptop": plain, "ci": created["token"], "root": admin["token"]}

    # the format: hm_ and 43 characters of base64url, 256 random bits; all different
    for tok in tokens.values():
        assert re.fullmatch(r"hm_[A-Za-z0-9_-]{43}", tok)
        assert len(base64.urlsafe_b64decode(tok[3:] + "=")) == 32
    assert len(set(tokens.values())) == 3

    # the catalog resolves each by its hash, with the user's groups, role and limits
    cat = catalog(data)
    try:
        rec = cat.token_by_hash(token_hash(tokens["ci"]))
        assert rec is not None and rec.name == "ci" and rec.user == "bob" and rec.groups == {"ml", "ops"}
        assert rec.role is Role.WRITE and rec.repos == ("acme/*", "datasets/acme/*", "re:^team-[a-z]+/.*$")
        assert rec.usable() and rec.revoked_at is None
        assert cat.token_by_hash(token_hash(tokens["root"])).role is Role.ADMIN  # type: ignore[union-attr]
        rec = cat.token_by_hash(token_hash(tokens["laptop"]))
        assert rec is not None and rec.role is Role.READ and rec.repos is None and rec.expires_at is None
        assert cat.token_by_hash(token_hash("hm_" + "A" * 43)) is None
        assert cat.token_by_hash("0" * 64) is None
    finally:
        cat.close()

    listed = json.loads(run("token", "list", "--json").stdout)
    assert [(t["name"], t["user"], t["role"], t["state"]) for t in listed] == [
        ("ci", "bob", "write", "active"), ("laptop", "alice", "read", "active"), ("root", "alice", "admin", "active")]
    assert set(listed[0]) == {"name", "user", "role", "repos", "state", "created_at", "expires_at", "revoked_at",
                              "last_used_at"}
    assert [t["name"] for t in json.loads(run("token", "list", "--user", "alice", "--json").stdout)] == \
        ["laptop", "root"]
    run("token", "list")
    run("token", "revoke", "laptop")
    run("token", "revoke", "laptop", "--json")
    run("user", "group", "alice", "--add", "ops", "--json")
    run("user", "remove", "bob")
    run("audit")
    events = json.loads(run("audit", "--json").stdout)
    run("audit", "--since", "1d", "--limit", "5", "--json")

    actions = [e["action"] for e in events]
    assert actions == ["user-add", "user-add", "group-add", "group-add", "group-remove", "token-create",
                       "token-create", "token-create", "token-revoke", "group-add", "user-remove"]
    assert {(e["actor"], e["client"]) for e in events} == {("cli:tester", "local")}
    create = events[6]["detail"]
    assert create["name"] == "ci" and create["user"] == "bob" and create["role"] == "write"
    assert create["repos"] == ["acme/*", "datasets/acme/*", "re:^team-[a-z]+/.*$"] and create["expires_at"]
    assert events[-1]["detail"] == {"user": "bob", "tokens_deleted": ["ci"]}

    # no token and no hash in anything printed after it was created; in storage only the hash
    stored = everything_stored(data)
    for tok in tokens.values():
        digest = hashlib.sha256(tok.encode()).hexdigest()
        assert digest == token_hash(tok)
        for out in outputs:
            assert tok not in out and digest not in out
        assert tok.encode() not in stored
        assert tok[3:].encode() not in stored  # not even without its prefix
    cat = catalog(data)
    try:
        with cat.engine.connect() as c:
            hashes = {r.name: r.hash for r in c.execute(sa.text("SELECT name, hash FROM tokens"))}
    finally:
        cat.close()
    assert hashes == {"laptop": token_hash(tokens["laptop"]), "root": token_hash(tokens["root"])}


def test_revoke(data: Path) -> None:
    ok(data, "user", "add", "carol")
    tok = json.loads(ok(data, "token", "create", "t1", "--user", "carol", "--json").stdout)["token"]
    p = ok(data, "token", "revoke", "t1")
    assert "revoked token t1" in p.stdout
    p = ok(data, "token", "revoke", "t1")
    assert "revoked already" in p.stdout
    listed = js(data, "token", "list")
    assert listed[0]["state"] == "revoked" and listed[0]["revoked_at"]  # type: ignore[index]
    cat = catalog(data)
    try:
        rec = cat.token_by_hash(token_hash(tok))
        assert rec is not None and rec.revoked_at is not None and not rec.usable()
        assert [e["detail"] for e in cat.audit_events(action="token-revoke")] == [{"name": "t1", "user": "carol"}]
    finally:
        cat.close()
    p = hm(data, "token", "revoke", "nope")
    assert p.returncode == 1 and "no token named 'nope'" in p.stderr
    p = hm(data, "token", "revoke", "nope", "--json")
    assert p.returncode == 1
    failed = json.loads(p.stdout)
    assert set(failed) == {"status", "error"} and failed["status"] == "failed"
    assert "no token named 'nope'" in failed["error"]


def test_removing_a_user_removes_its_tokens(data: Path) -> None:
    ok(data, "user", "add", "dave", "--group", "ml")
    ok(data, "user", "add", "erin", "--group", "ml")
    toks = [json.loads(ok(data, "token", "create", n, "--user", "dave", "--json").stdout)["token"]
            for n in ("d1", "d2")]
    keep = json.loads(ok(data, "token", "create", "e1", "--user", "erin", "--json").stdout)["token"]
    p = ok(data, "user", "remove", "dave", "--json")
    assert json.loads(p.stdout) == {"status": "removed", "name": "dave", "tokens_deleted": ["d1", "d2"]}
    cat = catalog(data)
    try:
        assert all(cat.token_by_hash(token_hash(t)) is None for t in toks)
        assert cat.token_by_hash(token_hash(keep)) is not None
        assert cat.list_groups() == {"ml": ["erin"]}
    finally:
        cat.close()
    assert [t["name"] for t in js(data, "token", "list")] == ["e1"]  # type: ignore[union-attr]
    p = hm(data, "user", "remove", "dave")
    assert p.returncode == 1 and "no user named 'dave'" in p.stderr
    p = hm(data, "token", "create", "d3", "--user", "dave")
    assert p.returncode == 1 and "no user named 'dave'" in p.stderr and not p.stdout
    p = hm(data, "user", "group", "dave", "--add", "ml")
    assert p.returncode == 1 and "no user named 'dave'" in p.stderr


def test_expiry_is_stored_and_durations_are_checked(data: Path) -> None:
    ok(data, "user", "add", "frank")
    before = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    for name, flag, delta in (("t90d", "90d", timedelta(days=90)), ("t12h", "12h", timedelta(hours=12)),
                              ("t30m", "30m", timedelta(minutes=30)), ("t2w", "2w", timedelta(weeks=2))):
        got = json.loads(ok(data, "token", "create", name, "--user", "frank", "--expires", flag, "--json").stdout)
        assert before + delta <= utc(got["expires_at"]) <= before + delta + timedelta(minutes=2), (flag, got)
    listed = {t["name"]: t for t in js(data, "token", "list")}  # type: ignore[union-attr]
    assert utc(listed["t90d"]["expires_at"]) - utc(listed["t90d"]["created_at"]) == timedelta(days=90)
    cat = catalog(data)
    try:
        row = cat.get_token("t30m")
        assert row is not None and row.expires_at is not None
        assert row.state(row.expires_at + timedelta(seconds=1)) == "expired" and row.state() == "active"
    finally:
        cat.close()

    bad = ["0d", "5x", "", " ", "-1d", "1.5d", "d", "90", "90 days", "99999999999d", "36700000d", "1d2h",
           "9" * 12 + "s", "90D", "１d"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda v: hm(data, "token", "create", "tbad", "--user", "frank", "--expires", v), bad))
        since = list(pool.map(lambda v: hm(data, "audit", "--since", v), bad[:4]))
    for v, p in zip(bad, results, strict=True):
        assert p.returncode == 2 and "invalid --expires" in p.stderr and "Traceback" not in p.stderr, (v, p.stderr)
    for p in since:
        assert p.returncode == 2 and "invalid --since" in p.stderr, p.stderr
    assert "tbad" not in {t["name"] for t in js(data, "token", "list")}  # type: ignore[union-attr]
    p = hm(data, "audit", "--limit", "0")
    assert p.returncode == 2 and "invalid limit" in p.stderr


def test_duplicates_are_refused(data: Path) -> None:
    ok(data, "user", "add", "gina")
    p = hm(data, "user", "add", "gina")
    assert p.returncode == 1 and "a user named 'gina' exists already" in p.stderr
    p = hm(data, "user", "add", "gina", "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["status"] == "failed"
    ok(data, "user", "add", "hank")
    first = json.loads(ok(data, "token", "create", "shared", "--user", "gina", "--json").stdout)
    p = hm(data, "token", "create", "shared", "--user", "hank")
    assert p.returncode == 1 and "a token named 'shared' exists already" in p.stderr and not p.stdout
    p = hm(data, "token", "create", "shared", "--user", "hank", "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["status"] == "failed" and "hm_" not in p.stdout
    listed = js(data, "token", "list")
    assert [(t["name"], t["user"]) for t in listed] == [("shared", "gina")]  # type: ignore[union-attr]
    assert first["token"] not in everything_stored(data).decode("latin-1")
    # adding a member twice or removing a non-member changes nothing and audits nothing
    ok(data, "user", "group", "gina", "--add", "ml")
    p = ok(data, "user", "group", "gina", "--add", "ml", "--remove", "nothere")
    assert "already a member" in p.stdout and "not a member" in p.stdout
    # one bad group name changes nothing, and saying nothing to change is an error
    p = hm(data, "user", "group", "gina", "--add", "fine", "--add", "../x")
    assert p.returncode == 2 and "invalid group name '../x'" in p.stderr
    p = hm(data, "user", "group", "gina")
    assert p.returncode == 2 and "nothing to change" in p.stderr
    assert [u["groups"] for u in js(data, "user", "list") if u["name"] == "gina"] == [["ml"]]  # type: ignore
    cat = catalog(data)
    try:
        assert len(cat.audit_events(action="group-add")) == 1 and not cat.audit_events(action="group-remove")
    finally:
        cat.close()


HOSTILE = ["../x", "", "a" * 65, "abc\n", "abc\r\n", "a b", "a\x01b", "a\tb", "a\nb", "a\x7fb", "ünïcode", "名前",
           "x/y", ".hidden", "_x", "a;rm -rf", "a'b", "a\u202eb", "a\u200bb", "ａｂｃ"]


def test_hostile_names_are_clear_errors(data: Path) -> None:
    ok(data, "user", "add", "ivy")
    assert len("a" * 64) == 64 and ok(data, "user", "add", "a" * 64)  # the longest name is fine

    def check(what: str, v: str, err: str) -> None:
        assert f"invalid {what} name" in err and "1-64 characters" in err and "Traceback" not in err, (what, v, err)
        assert not any(ch in err.strip() for ch in "\x01\n\r\t\x7f\u202e\u200b"), err  # escaped, not echoed raw

    # every hostile name through every field, in process (what the admin API will call)
    from hubmirror import ops
    from hubmirror.errors import InvalidInput

    cat = catalog(data)
    actor = ops.Actor("test", "local")
    try:
        for v in HOSTILE:
            for what, call in (
                ("user", lambda v=v: ops.add_user(cat, actor, v)),
                ("group", lambda v=v: ops.add_user(cat, actor, "ok-user", [v])),
                ("group", lambda v=v: ops.add_to_group(cat, actor, "ivy", v)),
                ("group", lambda v=v: ops.remove_from_group(cat, actor, "ivy", v)),
                ("token", lambda v=v: ops.create_token(cat, actor, v, "ivy")),
                ("user", lambda v=v: ops.create_token(cat, actor, "ok-token", v)),
            ):
                with pytest.raises(InvalidInput) as e:
                    call()
                check(what, v, e.value.message)
        assert [u.name for u in cat.list_users()] == ["a" * 64, "ivy"] and cat.list_tokens() == []
        assert cat.audit_events(action="group-add") == [] and len(cat.audit_events()) == 2
    finally:
        cat.close()

    # and on the command line: each one as a user name, a few through each other field
    def attempts(v: str) -> list[tuple[str, str, subprocess.CompletedProcess[str]]]:
        out = [("user", v, hm(data, "user", "add", v))]
        if v in HOSTILE[:4]:
            out += [("group", v, hm(data, "user", "add", "ok-user", "--group", v)),
                    ("group", v, hm(data, "user", "group", "ivy", "--add", v)),
                    ("token", v, hm(data, "token", "create", v, "--user", "ivy")),
                    ("user", v, hm(data, "token", "create", "ok-token", "--user", v, "--json"))]
        return out

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(attempts, HOSTILE) for r in rs]
    for what, v, p in results:
        assert p.returncode == 2, (what, v, p.stdout, p.stderr)
        check(what, v, json.loads(p.stdout)["error"] if p.stdout else p.stderr)
    assert [u["name"] for u in js(data, "user", "list")] == ["a" * 64, "ivy"]  # type: ignore[union-attr]
    assert js(data, "token", "list") == []


def test_hostile_roles_patterns_and_token_lookalikes(data: Path) -> None:
    ok(data, "user", "add", "ivy")
    create = ("token", "create", "x", "--user", "ivy")
    tok = "hm_" + "Q" * 43
    cases: list[tuple[tuple[str, ...], str]] = [
        # a name that is a token would be stored, listed and audited: refused, and never echoed
        (("user", "add", tok), "looks like a token"),
        (("token", "create", tok, "--user", "ivy"), "looks like a token"),
        (("user", "add", "ivy", "--group", "hf_" + "a" * 30), "looks like a token"),
        ((*create, "--repo", tok), "looks like a token"),
        ((*create, "--expires", tok), "looks like a token"),
    ]
    cases += [((*create, "--role", r), "invalid role") for r in ("boss", "", "READ", "admin ")]
    cases += [((*create, "--repo", pat), "invalid repo pattern")
              for pat in ("", "re:(", "re:[", "a b", "acme/\x01x", "acme/\n", "x" * 301)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: hm(data, *c[0]), cases))
    for (args, expect), p in zip(cases, results, strict=True):
        assert p.returncode == 2 and expect in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert tok not in p.stderr + p.stdout and "hf_aaaa" not in p.stderr
    assert js(data, "token", "list") == []
    assert [u["name"] for u in js(data, "user", "list")] == ["ivy"]  # type: ignore[union-attr]


def test_audit_since_and_limit(data: Path) -> None:
    for n in ("u1", "u2", "u3"):
        ok(data, "user", "add", n)
    cat = catalog(data)
    try:
        # an old entry, and one from before actors were recorded (a repo's, as pin writes them)
        with cat.engine.begin() as c:
            c.execute(sa.text("INSERT INTO audit_log (at, action, repo_type, repo_id, detail) "
                              "VALUES (:at, 'pin', 'dataset', 'acme/old', '{}')"),
                      {"at": datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=3)})
        cat.audit("unpin", RepoRef(RepoType.MODEL, "acme/new"), commit="c" * 40)
    finally:
        cat.close()
    every = js(data, "audit")
    assert [e["action"] for e in every] == ["user-add", "user-add", "user-add", "pin", "unpin"]  # type: ignore[index]
    pin, unpin = every[3], every[4]  # type: ignore[index]
    assert pin["repo"] == "datasets/acme/old" and pin["actor"] is None and pin["client"] is None
    assert unpin["repo"] == "acme/new" and unpin["detail"] == {"commit": "c" * 40}
    assert [e["action"] for e in js(data, "audit", "--since", "1d")] == ["user-add"] * 3 + ["unpin"]  # type: ignore
    newest = js(data, "audit", "--limit", "2")
    assert [e["action"] for e in newest] == ["pin", "unpin"]  # type: ignore[union-attr]
    text = ok(data, "audit", "--since", "2h").stdout.splitlines()
    assert len(text) == 4 and "cli:tester" in text[0] and "local" in text[0] and "acme/new" in text[-1]


def test_touch_tokens_and_catalog_guards(tmp_path: Path) -> None:
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    cat.migrate()
    try:
        cat.add_user("kim", ["a", "b"])
        t1 = cat.add_token("k1", "kim", token_hash("hm_" + "x" * 43), "read", None, None)
        t2 = cat.add_token("k2", "kim", token_hash("hm_" + "y" * 43), Role.ADMIN, ["acme/*"],
                           datetime.now(timezone.utc) + timedelta(days=1))
        when = datetime(2030, 1, 2, 3, 4, 5)
        cat.touch_tokens({t1.id: when, t2.id: when - timedelta(days=1)})
        cat.touch_tokens({t1.id: when - timedelta(hours=1)})  # never backwards
        cat.touch_tokens({})
        got = {t.name: t for t in cat.list_tokens()}
        assert got["k1"].last_used_at == when and got["k2"].last_used_at == when - timedelta(days=1)
        assert got["k2"].expires_at is not None and got["k2"].expires_at.tzinfo is None
        rec = cat.token_by_hash(token_hash("hm_" + "y" * 43))
        assert rec is not None and rec.groups == {"a", "b"} and rec.repos == ("acme/*",)
        assert rec.usable(datetime.now(timezone.utc)) and not rec.usable(datetime.now(timezone.utc) + timedelta(days=2))
        from hubmirror.errors import Conflict, InvalidInput, NotFound

        with pytest.raises(InvalidInput, match="sha256"):
            cat.add_token("k3", "kim", "hm_" + "z" * 43, "read", None, None)  # a plaintext is never stored
        with pytest.raises(InvalidInput, match="repo pattern"):
            cat.add_token("k3", "kim", "0" * 64, "read", [], None)
        with pytest.raises(InvalidInput, match="invalid role"):
            cat.add_token("k3", "kim", "0" * 64, "root", None, None)
        with pytest.raises(Conflict):
            cat.add_token("k1", "kim", "0" * 64, "read", None, None)
        with pytest.raises(Conflict):
            cat.add_token("k3", "kim", token_hash("hm_" + "x" * 43), "read", None, None)
        with pytest.raises(NotFound):
            cat.add_token("k3", "nobody", "0" * 64, "read", None, None)
        assert repr(t1).count("hash") == 0
        from hubmirror import ops

        new = ops.create_token(cat, ops.Actor("test", "127.0.0.1"), "k4", "kim")
        assert new.token not in repr(new) and new.token not in str(new)
        assert cat.audit_events(action="token-create")[-1]["client"] == "127.0.0.1"
    finally:
        cat.close()


def test_migration_from_0005_keeps_rows_and_adds_the_tables(tmp_path: Path) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config as AlembicConfig
    from alembic.migration import MigrationContext

    from hubmirror.catalog.schema import metadata

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = sa.create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("hubmirror.catalog") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0005"
        assert "users" not in sa.inspect(conn).get_table_names()
        conn.execute(sa.text("INSERT INTO audit_log (at, action, repo_type, repo_id, detail) "
                             "VALUES ('2024-05-06 07:08:09', 'purge', 'model', 'acme/gone', '{\"reason\": \"old\"}')"))
    engine.dispose()

    cat = Catalog(url)
    try:
        cat.migrate()
        cat.migrate()  # idempotent
        with cat.engine.connect() as conn:
            from alembic.script import ScriptDirectory

            head = ScriptDirectory.from_config(cfg).get_current_head()
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head
            tables = set(sa.inspect(conn).get_table_names())
            assert {"users", "group_members", "tokens"} <= tables
            cols = {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}
            assert {"actor", "client"} <= cols
            # schema.py and the migrations describe the same database
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        (old,) = cat.audit_events()
        assert old["action"] == "purge" and old["repo_id"] == "acme/gone" and old["detail"] == {"reason": "old"}
        assert old["actor"] is None and old["client"] is None and old["at"] == datetime(2024, 5, 6, 7, 8, 9)
        cat.add_user("lee", ["g"])
        cat.audit("user-add", None, actor="cli:x", client="local", user="lee")
        assert cat.audit_events()[-1]["actor"] == "cli:x"
        # a user's tokens go with it through the foreign key too
        cat.add_token("l1", "lee", "1" * 64, "read", None, None)
        with cat.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM users WHERE name = 'lee'"))
        assert cat.list_tokens() == [] and cat.list_groups() == {}
    finally:
        cat.close()
