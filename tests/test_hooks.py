"""Post-sync hooks ([[hooks]]): a real mirror sync from the fake Hub runs the hook on a read-only
snapshot of the new commit, with its environment; the timeout kills the hook's process group; a
failing hook notifies; results show in `hubmirror status REPO`; a hook cannot change a blob."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from backends import current as backend
from fakes.hub import FakeHub
from fakes.receiver import Receiver
from helpers import Server, hubmirror_env, raw

from hubmirror.catalog.catalog import RefUpdate
from hubmirror.catalog.events import HookRunRow
from hubmirror.config import load_settings
from hubmirror.errors import ConfigError
from hubmirror.events import hooks as hk
from hubmirror.events.settings import HookSettings
from hubmirror.model.entries import Commit, Entry
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore

HM = [sys.executable, "-m", "hubmirror"]
ROOT = os.geteuid() == 0
# a python the hook's user can run: as root hooks run as nobody, who cannot enter /root (pyenv)
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
UPSTREAM_TOKEN = "hf_upstreamSECRETtoken0123456789"

INSPECT = r'''
import errno, hashlib, json, os, sys
out = os.environ["OUT"]
snap = os.environ["HUBMIRROR_SNAPSHOT"]
files = {}
for d, _dirs, names in os.walk(snap):
    for n in names:
        p = os.path.join(d, n)
        files[os.path.relpath(p, snap)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
tries = {}
def attempt(what, fn):
    try:
        fn()
        tries[what] = "ok"
    except OSError as e:
        tries[what] = errno.errorcode.get(e.errno, str(e.errno))
victim = os.path.join(snap, "config.json")
attempt("write", lambda: open(victim, "r+b").write(b"HACKED"))
attempt("append", lambda: open(victim, "ab").write(b"HACKED"))
attempt("create", lambda: open(os.path.join(snap, "new-file"), "wb").write(b"x"))
attempt("remove", lambda: os.unlink(victim))
if os.environ.get("TRY_CHMOD"):
    attempt("chmod", lambda: os.chmod(victim, 0o666))
    attempt("write-after-chmod", lambda: open(victim, "r+b").write(b"HACKED"))
env = {k: v for k, v in os.environ.items()}
doc = {"env": env, "uid": os.getuid(), "cwd": os.getcwd(), "files": files, "tries": tries,
       "changed": open(os.environ["HUBMIRROR_CHANGED_FILES"]).read(),
       "snapshot_mode": oct(os.stat(snap).st_mode & 0o777)}
with open(os.path.join(out, os.environ["HUBMIRROR_COMMIT"] + ".json"), "w") as fh:
    json.dump(doc, fh)
print("inspected", len(files), "files")
'''

SLOW = r'''
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])
open(os.path.join(os.environ["OUT"], "grandchild.pid"), "w").write(str(child.pid))
print("started", child.pid, flush=True)
time.sleep(300)
'''

FAILS = r'''
import sys
for i in range(400):
    print("noise line", i)
print("the last line")
sys.exit(3)
'''


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(page_size=50).start()
    yield h
    h.stop()


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder the hook's user can reach (pytest's tmp_path is 0700 root when tests run as root,
    and hooks then run as nobody), with `out/` the hooks may write their findings to."""
    d = Path(tempfile.mkdtemp(prefix="hm-hooks-"))
    d.chmod(0o755)
    (d / "out").mkdir()
    (d / "out").chmod(0o777)
    for name, code in (("inspect.py", INSPECT), ("slow.py", SLOW), ("fails.py", FAILS)):
        (d / name).write_text(textwrap.dedent(code))
        (d / name).chmod(0o644)
    yield d
    for p in (d / "data" / "hooks").glob("*") if (d / "data" / "hooks").exists() else []:
        hk.remove_tree(p)
    shutil.rmtree(d, ignore_errors=True)


def wait_for(cond: Callable[[], Any], timeout: float = 40.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what}: not met in {timeout} s")


def hook_runs(data: Path, repo: str) -> list[dict[str, Any]]:
    cat = backend().catalog(data)
    try:
        return cat.hook_runs(RepoRef(RepoType.MODEL, repo))
    finally:
        cat.close()


def status(data: Path, cfg: Path, *args: str) -> str:
    p = subprocess.run([*HM, "--config", str(cfg), "status", *args, "--data", str(data)], check=False, capture_output=True,
                       text=True, env=hubmirror_env(data), timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_bad_hooks_tables_are_refused(tmp_path: Path) -> None:
    cases = {
        'command = "check --strict"': "list of arguments run without a shell",
        "command = []": "hooks.0.command",
        'command = ["/bin/true"]\nuser = "root"': "never runs as root",
        'command = ["/bin/true"]\nrepos = ["re:(unclosed"]': "invalid regex",
        'command = ["/bin/true"]\ntimeout = 0': "hooks.0.timeout",
        'command = ["/bin/true"]\nenv = { HUBMIRROR_REPO = "x" }': "set by hubmirror itself",
    }
    cfg = tmp_path / "c.toml"
    for table, expected in cases.items():
        cfg.write_text(f"[[hooks]]\n{table}\n")
        with pytest.raises(ConfigError) as e:
            load_settings(cfg)
        assert expected in e.value.message, (table, e.value.message)
    cfg.write_text('[[hooks]]\ncommand = ["/a/check"]\n[[hooks]]\ncommand = ["/b/check"]\n')
    with pytest.raises(ConfigError, match="two \\[\\[hooks\\]\\] tables are named 'check'"):
        load_settings(cfg)
    cfg.write_text('[[hooks]]\ncommand = ["/usr/local/bin/check-model", "--strict"]\nrepos = ["acme/*"]\ncheck = true\n')
    (h,) = load_settings(cfg).hooks
    assert h.name == "check-model" and h.check and h.timeout == 600


def test_hook_runs_on_a_read_only_snapshot_with_its_environment(hub: FakeHub, base: Path) -> None:
    v1 = {"config.json": b'{"v": 1}\n', "model.safetensors": os.urandom(300_000), "sub/a.txt": b"a" * 100}
    c1 = hub.commit("acme/hooked", v1)
    out = base / "out"
    cfg = base / "hm.toml"
    cfg.write_text(f'''
upstream = "{hub.url}"
upstream_token = "{UPSTREAM_TOKEN}"
scheduler_tick = 0.2
webhook_secret = "whsecret"

[[mirrors]]
repo = "acme/hooked"
schedule = "1d"

[[hooks]]
name = "inspect"
command = ["{PY}", "{base / 'inspect.py'}"]
repos = ["acme/*"]
timeout = 60
check = true
env = {{ OUT = "{out}", TRY_CHMOD = "{'1' if ROOT else ''}" }}

[[hooks]]
name = "elsewhere"
command = ["{PY}", "{base / 'inspect.py'}"]
repos = ["other-org/*"]
''')
    data = base / "data"
    s = Server(data, "--config", str(cfg), env={"HF_TOKEN": "hf_serverSECRET000000000000000000"})
    try:
        doc = json.loads(wait_for(lambda: (out / f"{c1}.json").exists() and (out / f"{c1}.json").read_text(),
                                  what="the hook ran on the first commit"))
        env = doc["env"]
        assert env["HUBMIRROR_REPO"] == "acme/hooked" and env["HUBMIRROR_REPO_TYPE"] == "model"
        assert env["HUBMIRROR_REVISION"] == "main" and env["HUBMIRROR_COMMIT"] == c1
        assert env["HUBMIRROR_OLD_COMMIT"] == "" and env["HUBMIRROR_HOOK"] == "inspect"
        assert env["HUBMIRROR_ENDPOINT"] == s.url and env["HF_ENDPOINT"] == s.url
        # never the server's secrets: not its environment, not the upstream token
        assert "HF_TOKEN" not in env and not any(k.startswith("HUBMIRROR_") and k not in {
            "HUBMIRROR_REPO", "HUBMIRROR_REPO_TYPE", "HUBMIRROR_REVISION", "HUBMIRROR_COMMIT", "HUBMIRROR_OLD_COMMIT",
            "HUBMIRROR_CHANGED_FILES", "HUBMIRROR_SNAPSHOT", "HUBMIRROR_ENDPOINT", "HUBMIRROR_HOOK"} for k in env)
        assert UPSTREAM_TOKEN not in json.dumps(doc)
        if ROOT:
            assert doc["uid"] == 65534  # nobody: root ignores file modes
        # the snapshot: the commit's files, byte for byte, read-only
        assert doc["files"] == {p: sha(b) for p, b in v1.items()}
        assert doc["snapshot_mode"] == "0o555" and doc["cwd"] == env["HUBMIRROR_SNAPSHOT"]
        assert doc["changed"].splitlines() == ["config.json", "model.safetensors", "sub/a.txt"]
        tries = doc["tries"]
        assert tries["write"] == tries["append"] == "EACCES" and tries["create"] == tries["remove"] == "EACCES"
        if ROOT:
            assert tries["chmod"] == "EPERM" and tries["write-after-chmod"] == "EACCES"
        # the blobs are intact and still read-only; the snapshot is gone
        (run,) = wait_for(lambda: [r for r in hook_runs(data, "acme/hooked") if r["status"] == "done"], what="done")
        assert run["result"] == "ok" and run["exit_code"] == 0 and run["check"] is True
        assert "inspected 3 files" in run["output"]
        assert not Path(env["HUBMIRROR_SNAPSHOT"]).exists()
        store = backend().store(data)
        for b in v1.values():
            path = store.local_path(sha(b))
            assert path is not None and path.read_bytes() == b and path.stat().st_mode & 0o777 == 0o444
        assert raw(s.url, "GET", "/acme/hooked/resolve/main/config.json").body == v1["config.json"]

        # a new upstream commit, synced on a webhook: the hook gets the old commit and what changed
        c2 = hub.commit("acme/hooked", {**v1, "config.json": b'{"v": 2}\n', "new.txt": b"new"})
        payload = {"event": {"action": "update", "scope": "repo.content"},
                   "repo": {"type": "model", "name": "acme/hooked", "headSha": c2}}
        r = raw(s.url, "POST", "/api/hooks/hub", {"X-Webhook-Secret": "whsecret"}, json.dumps(payload).encode())
        assert r.status == 202
        doc2 = json.loads(wait_for(lambda: (out / f"{c2}.json").exists() and (out / f"{c2}.json").read_text(),
                                   what="the hook ran on the second commit"))
        assert doc2["env"]["HUBMIRROR_OLD_COMMIT"] == c1 and doc2["env"]["HUBMIRROR_COMMIT"] == c2
        assert doc2["changed"].splitlines() == ["config.json", "new.txt"]
        wait_for(lambda: all(r["status"] == "done" for r in hook_runs(data, "acme/hooked"))
                 and len(hook_runs(data, "acme/hooked")) == 2, what="both runs recorded")
        # status: the newest result of each hook; with REPO_ID every run, and --json
        text = status(data, cfg, "acme/hooked")
        assert f"hook inspect (check) on main {c2[:12]}: ok, " in text
        assert f"hook inspect (check) on main {c1[:12]}: ok" in text
        (st,) = json.loads(status(data, cfg, "--json"))
        assert [(h["hook"], h["commit"], h["result"]) for h in st["hooks"]] == [("inspect", c2, "ok")]
        assert sorted(os.listdir(out)) == sorted([f"{c1}.json", f"{c2}.json"])  # "elsewhere" never ran
        # and the repo's page in the web UI shows both results
        page = raw(s.url, "GET", "/-/models/acme/hooked").body.decode()
        assert page.count('class="hook-run"') == 2 and c2[:12] in page and "(exit 0)" in page, page[-3000:]
    finally:
        s.stop()


def test_a_hook_is_killed_at_its_timeout_and_failures_notify(hub: FakeHub, base: Path) -> None:
    c1 = hub.commit("acme/slow", {"config.json": b"{}"})
    out = base / "out"
    rx = Receiver().start()
    cfg = base / "hm.toml"
    cfg.write_text(f'''
upstream = "{hub.url}"
scheduler_tick = 0.2

[[mirrors]]
repo = "acme/slow"
schedule = "1d"

[[hooks]]
name = "slow"
command = ["{PY}", "{base / 'slow.py'}"]
timeout = 1.5
env = {{ OUT = "{out}" }}

[[hooks]]
name = "fails"
command = ["{PY}", "{base / 'fails.py'}"]

[[hooks]]
name = "missing"
command = ["/nonexistent/bin/check"]

[[notify]]
url = "{rx.url}/alerts"
events = ["hook-failed"]
backoff = 0.2
''')
    data = base / "data"
    s = Server(data, "--config", str(cfg))
    try:
        got = wait_for(lambda: len(rx.on("/alerts")) >= 3 and rx.on("/alerts"), what="three hook-failed events")
        alerts = {r.json()["hook"]: r.json() for r in got}
        assert all(a["event"] == "hook-failed" and a["repo_id"] == "acme/slow" and a["commit"] == c1
                   for a in alerts.values())
        assert alerts["slow"]["result"] == "timeout" and 1.5 <= alerts["slow"]["duration"] < 15
        assert alerts["fails"]["result"] == "failed" and alerts["fails"]["exit_code"] == 3
        assert alerts["fails"]["output_tail"].rstrip().endswith("the last line")
        assert alerts["missing"]["result"] == "error" and "cannot start" in alerts["missing"]["output_tail"]
        # the whole process group died with the hook: its grandchild too
        pid = int((out / "grandchild.pid").read_text())
        assert wait_for(lambda: not Path(f"/proc/{pid}").exists()
                        or Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z", timeout=10,
                        what="the grandchild was killed")
        runs = {r["hook"]: r for r in hook_runs(data, "acme/slow")}
        assert runs["slow"]["result"] == "timeout" and runs["slow"]["exit_code"] is None
        assert "started" in runs["slow"]["output"]
        assert runs["fails"]["result"] == "failed" and len(runs["fails"]["output"]) <= 4096
        assert runs["fails"]["output"].rstrip().endswith("the last line")
        text = status(data, cfg, "acme/slow")
        assert "hook slow on main" in text and ": timeout" in text
        assert "hook fails on main" in text and "failed (exit 3)" in text and "the last line" in text
        assert not any((data / "hooks").iterdir())  # every run folder removed
    finally:
        s.stop()
        rx.stop()


def test_a_blob_a_hook_changed_anyway_is_caught_and_removed(tmp_path: Path) -> None:
    """What a hook running as the server's own user could still do on purpose (chmod, then
    write): the check after the hook finds the blob changed, hashes it, and removes it."""
    data = tmp_path / "data"
    cat = backend().catalog(data)
    store = backend().store(data)
    try:
        content = b"precious weights" * 100
        digest = sha(content)
        w = store.writer(digest)
        w.write(content)
        w.commit(digest, len(content))
        ref = RepoRef(RepoType.MODEL, "acme/x")
        repo = cat.ensure_repo(ref, "mirror")
        commit = "c" * 40

        cat.record_commit(repo, Commit(commit, date=datetime.now(UTC)),
                          [Entry("w.bin", "file", "a" * 40, len(content), digest, True, 130, commit)],
                          [RefUpdate("refs/heads/main", commit, expect=None)], "test")
        run = HookRunRow(1, "h", ref, "main", commit, None, False, 1, "claim")
        snap = hk.build_snapshot(cat, store, run, tmp_path / "snap", 1 << 30)
        assert snap.files == 1 and (tmp_path / "snap" / "w.bin").read_bytes() == content
        assert hk.check_blobs(store, snap) == []  # untouched: nothing to do
        victim = tmp_path / "snap" / "w.bin"
        victim.chmod(0o644)  # the same inode as the blob
        with open(victim, "r+b") as fh:
            fh.write(b"HACKED")
        bad = hk.check_blobs(store, snap)
        assert [b[0] for b in bad] == [digest] and store.stat(digest) is None  # never served altered
        hk.remove_tree(tmp_path / "snap")
        assert not (tmp_path / "snap").exists()
    finally:
        cat.close()


class _ObjectStore(LocalBlobStore):
    """A store that, like S3, has no local path for a blob (reads go through `read`)."""

    def local_path(self, sha256: str) -> Path | None:
        return None


def test_an_object_store_snapshot_is_a_private_copy_or_skipped_when_large(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cat = backend().catalog(data)
    store = _ObjectStore(tmp_path / "objects")
    try:
        files = {"config.json": b'{"a": 1}', "sub/w.bin": b"w" * 5000}
        entries = []
        for path, content in files.items():
            w = store.writer(sha(content))
            w.write(content)
            w.commit(sha(content), len(content))
            entries.append(Entry(path, "file", hashlib.sha1(content).hexdigest(), len(content), sha(content), True, 130))
        ref = RepoRef(RepoType.MODEL, "acme/s3")
        repo = cat.ensure_repo(ref, "mirror")
        commit = "d" * 40
        cat.record_commit(repo, Commit(commit, date=datetime.now(UTC)), entries,
                          [RefUpdate("refs/heads/main", commit, expect=None)], "test")
        run = HookRunRow(1, "h", ref, "main", commit, None, False, 1, "claim")
        snap = hk.build_snapshot(cat, store, run, tmp_path / "snap", 1 << 20)
        assert snap.files == 2 and snap.linked == {}  # copies: nothing of the store to protect
        for path, content in files.items():
            f = tmp_path / "snap" / path
            assert f.read_bytes() == content and f.stat().st_mode & 0o777 == 0o444
        assert (tmp_path / "snap").stat().st_mode & 0o777 == 0o555
        hk.remove_tree(tmp_path / "snap")
        big = hk.build_snapshot(cat, store, run, tmp_path / "snap2", 1000)
        assert big.folder is None and "more than snapshot_max (1000)" in big.note
        assert not (tmp_path / "snap2").exists()
        env = hk.hook_env(HookSettings(command=["/bin/true"]), run, endpoint="http://m", snapshot=big,
                          changed_files=tmp_path / "c", user=None)
        assert env["HUBMIRROR_SNAPSHOT"] == "" and "snapshot_max" in env["HUBMIRROR_SNAPSHOT_SKIPPED"]
    finally:
        cat.close()
