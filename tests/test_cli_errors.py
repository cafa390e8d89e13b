"""What a careless user gets from the CLI: one clear line naming what was wrong, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HM = [sys.executable, "-m", "hubmirror"]


def hm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HM, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "m").mkdir()
    (root / "m" / "config.json").write_text('{"a": 1}')
    (root / "a-file").write_text("x")
    p = hm("import", "acme/m", str(root / "m"), "--data", str(root / "d"))
    assert p.returncode == 0, p.stderr
    return root


@pytest.mark.parametrize("args, needle", [
    (["lock", "acme/m", "-o", "{root}/missing/x.lock"], "does its folder exist"),
    (["lock", "acme/m", "-o", "{root}/a-file/x.lock"], "a part of that path is a file"),
    (["export", "acme/m", "-o", "{root}/missing/x.tar"], "does its folder exist"),
    (["export", "acme/m", "-o", "{root}/a-file/x.tar"], "a part of that path is a file"),
])
def test_unusable_output_paths_are_one_line(data: Path, args: list[str], needle: str) -> None:
    p = hm(*[a.format(root=data) for a in args], "--data", str(data / "d"))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert str(data) in lines[0]
    assert not (data / "missing").exists()



def test_serve_on_a_port_in_use_or_an_address_not_here_is_one_line(data: Path) -> None:
    from helpers import Server

    s = Server(data / "d", "--offline")
    try:
        assert "offline" in s.log.read_text()  # the start says what it serves
        p = hm("serve", "--data", str(data / "d"), "--port", str(s.port))
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert "cannot listen on 127.0.0.1" in p.stderr and "in use" in p.stderr
        assert "hubmirror serving" not in p.stderr  # nothing announced before it failed
    finally:
        s.stop()
    p = hm("serve", "--data", str(data / "d"), "--host", "192.0.2.77", "--port", "18999")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "cannot listen on 192.0.2.77" in p.stderr, p.stderr


def test_sync_from_an_unreachable_upstream_says_which_and_what_to_do(data: Path) -> None:
    import json

    env_args = ["--data", str(data / "d"), "--upstream", "http://127.0.0.1:9"]
    p = subprocess.run([*HM, "sync", "acme/x", *env_args], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "HUBMIRROR_UPSTREAM_RETRIES": "1",
                            "HUBMIRROR_UPSTREAM_BACKOFF": "0.01"})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "http://127.0.0.1:9" in last and "--offline" in last, p.stderr
    assert "ConnectionKey(" not in p.stderr  # readable retries, not reprs
    p = subprocess.run([*HM, "sync", "acme/x", *env_args, "--json"], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "HUBMIRROR_UPSTREAM_RETRIES": "0"})
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["status"] == "failed" and "http://127.0.0.1:9" in out["error"]
    # every key the README documents for sync --json
    for key in ("repo_id", "status", "revisions", "files_fetched", "bytes_fetched", "files_reused", "bytes_reused",
                "upstream_calls", "error"):
        assert key in out, key


def test_status_shows_hosted_repos_failed_cli_syncs_and_says_when_there_is_nothing(data: Path, tmp_path: Path) -> None:
    import os

    p = hm("status", "--data", str(tmp_path / "empty"))
    assert p.returncode == 0 and "nothing here yet" in p.stdout
    p = hm("status", "--data", str(data / "d"))
    assert p.returncode == 0 and "acme/m (hosted" in p.stdout
    env = {**os.environ, "HUBMIRROR_UPSTREAM_RETRIES": "0"}
    assert subprocess.run([*HM, "mirror", "add", "acme/y", "--data", str(data / "d")], env=env).returncode == 0
    for repo in ("acme/y", "acme/never"):
        subprocess.run([*HM, "sync", repo, "--data", str(data / "d"), "--upstream", "http://127.0.0.1:9"],
                       env=env, capture_output=True, timeout=120)
    p = hm("status", "--data", str(data / "d"))
    assert "last sync attempt" in p.stdout and "(cli): failed" in p.stdout and "unreachable" in p.stdout, p.stdout
    p = hm("status", "acme/never", "--data", str(data / "d"))
    assert p.returncode == 0 and "never mirrored" in p.stdout and "failed" in p.stdout, p.stdout


def test_mirror_list_shows_a_frozen_mirror_as_frozen(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    assert hm("mirror", "add", "acme/cold", "--data", d).returncode == 0
    assert hm("mirror", "freeze", "acme/cold", "--data", d).returncode == 0
    line = next(x for x in hm("mirror", "list", "--data", d).stdout.splitlines() if "acme/cold" in x)
    assert "frozen" in line and "enabled" not in line


def test_a_lost_hosted_blob_is_a_clear_503_until_reimported(tmp_path: Path) -> None:
    import hashlib
    import os

    from helpers import Server, raw

    folder = tmp_path / "model"
    folder.mkdir()
    weights = os.urandom(100_000)
    (folder / "w.bin").write_bytes(weights)
    d = tmp_path / "d"
    assert hm("import", "acme/lost", str(folder), "--data", str(d)).returncode == 0
    sha = hashlib.sha256(weights).hexdigest()
    blob = d / "blobs" / "sha256" / sha[:2] / sha[2:4] / sha
    blob.chmod(0o644)
    blob.write_bytes(b"rot" + weights[3:])  # bit rot on the only copy
    p = hm("scrub", "--repair", "--data", str(d), "--upstream", "http://127.0.0.1:9")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "hosted content" in p.stdout and "hubmirror import acme/lost" in p.stdout, p.stdout
    s = Server(d, "--offline")
    try:
        r = raw(s.url, "GET", "/acme/lost/resolve/main/w.bin")
        assert r.status == 503 and r.headers["x-error-code"] == "BlobMissing", r
        assert "import" in r.json()["error"]
    finally:
        s.stop()
    assert hm("import", "acme/lost", str(folder), "--data", str(d)).returncode == 0  # the repair
    s = Server(d, "--offline")
    try:
        assert raw(s.url, "GET", "/acme/lost/resolve/main/w.bin").body == weights
    finally:
        s.stop()
