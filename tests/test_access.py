"""Access control with the real clients against a real server: tokens (HF_TOKEN, `hf auth`,
`?token=` for wget), the policy in the config file, forbidden answering exactly like missing,
revoked and expired tokens, offline and pull-through keeping every check, rate limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes.hub import FakeHub
from helpers import Reply, Server, hubmirror_env, raw, run_client

pytestmark = pytest.mark.e2e

HM = [sys.executable, "-m", "hubmirror"]

CONFIG = """
[access]
anonymous = "read"

[[access.rules]]
repos = ["team/*"]
read = ["group:ml"]

[[access.rules]]
repos = ["acme/private", "datasets/acme/private-ds"]
read = ["group:ml", "user:carol"]
"""


def hm(data: Path, *args: str, config: Path | None = None) -> str:
    cmd = [*HM, *args, "--data", str(data)] + (["--config", str(config)] if config else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=hubmirror_env(data))
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def token(data: Path, name: str, user: str, *extra: str) -> str:
    return str(json.loads(hm(data, "token", "create", name, "--user", user, "--json", *extra))["token"])


def put(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    return folder


@dataclass
class Team:
    server: Server
    data: Path
    config: Path
    tokens: dict[str, str]
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    base = tmp_path_factory.mktemp("team")
    data = base / "data"
    config = base / "hubmirror.toml"
    config.write_text(CONFIG)
    files = {"config.json": b'{"model_type": "bert", "hidden_size": 8}', "README.md": b"# team\n"}
    for repo in ("team/model", "acme/public"):
        hm(data, "import", repo, str(put(base / repo.replace("/", "_"), files)))
    hm(data, "import", "acme/private", str(put(base / "private", files)), "--private")
    hm(data, "user", "add", "alice", "--group", "ml")
    hm(data, "user", "add", "bob", "--group", "other")
    hm(data, "user", "add", "carol")
    tokens = {
        "alice": token(data, "alice-laptop", "alice"),
        "bob": token(data, "bob-laptop", "bob"),
        "carol": token(data, "carol-ci", "carol"),
        "limited": token(data, "alice-acme-only", "alice", "--repo", "acme/*"),
        "revoked": token(data, "alice-old", "alice"),
        "expiring": token(data, "alice-short", "alice", "--expires", "1s"),
    }
    hm(data, "token", "revoke", "alice-old")
    s = Server(data, "--config", str(config))
    try:
        yield Team(s, data, config, tokens, files)
    finally:
        s.stop()


def get(team: Team, path: str, who: str | None = None, method: str = "GET") -> Reply:
    headers = {"Authorization": f"Bearer {team.tokens[who]}"} if who else {}
    return raw(team.server.url, method, path, headers)


def same(a: Reply, b: Reply) -> bool:
    """Two answers a client cannot tell apart (status, error code, body)."""
    return (a.status, a.headers.get("x-error-code"), a.body) == (b.status, b.headers.get("x-error-code"), b.body)


DOWNLOAD = """
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import AutoConfig
p = hf_hub_download("team/model", "config.json")
d = snapshot_download("team/model")
cfg = AutoConfig.from_pretrained("team/model")
out({"config": open(p).read(), "files": sorted(__import__("os").listdir(d)), "hidden": cfg.hidden_size})
"""


@pytest.mark.parametrize("xet", [True, False], ids=["xet", "no-xet"])
def test_real_clients_with_hf_token_read_what_their_group_may(team: Team, tmp_path: Path, xet: bool) -> None:
    res = run_client(DOWNLOAD, team.server.url, tmp_path / "hf", xet=xet, env={"HF_TOKEN": team.tokens["alice"]})
    assert "error" not in res, res
    assert res["config"] == team.files["config.json"].decode() and res["hidden"] == 8
    assert res["files"] == ["README.md", "config.json"]


def test_without_a_token_or_with_another_groups_token_the_repo_does_not_exist(team: Team, tmp_path: Path) -> None:
    code = """
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
try:
    hf_hub_download("REPO", "config.json")
    out({"got": "file"})
except RepositoryNotFoundError as e:
    out({"got": "RepositoryNotFoundError", "status": e.response.status_code})
"""
    for who, status in ((None, 401), ("bob", 404)):
        env = {"HF_TOKEN": team.tokens[who]} if who else {}
        for repo in ("team/model", "team/nothing-here"):  # forbidden, and missing: the same to the client
            res = run_client(code.replace("REPO", repo), team.server.url, tmp_path / f"hf-{who}", env=env)
            assert res == {"got": "RepositoryNotFoundError", "status": status}, (who, repo, res)
    # at the HTTP level: the very same answer for a forbidden repo and a missing one, on every route
    for who in (None, "bob"):
        for route in ("/{r}/resolve/main/config.json", "/api/models/{r}", "/api/models/{r}/tree/main",
                      "/api/models/{r}/refs", "/api/models/{r}/commits/main", "/api/models/{r}/revision/main",
                      "/api/mirror/models/{r}/check-update"):
            forbidden = get(team, route.format(r="team/model"), who)
            missing = get(team, route.format(r="team/nothing-here"), who)
            assert forbidden.headers.get("x-error-code") == "RepoNotFound" and same(forbidden, missing), (who, route)
            private, missing = get(team, route.format(r="acme/private"), who), get(team, route.format(r="acme/nope"), who)
            assert same(private, missing), (who, route)
        r = raw(team.server.url, "POST", "/api/models/team/model/paths-info/main",
                {"Content-Type": "application/x-www-form-urlencoded",
                 **({"Authorization": f"Bearer {team.tokens[who]}"} if who else {})}, b"paths=config.json")
        assert r.headers.get("x-error-code") == "RepoNotFound"


def test_private_repos_need_a_rule_naming_the_reader(team: Team) -> None:
    assert get(team, "/acme/public/resolve/main/config.json").status == 200  # no rule: anyone
    assert get(team, "/acme/private/resolve/main/config.json").status == 401  # private: not anyone
    assert get(team, "/acme/private/resolve/main/config.json", "bob").status == 404
    assert get(team, "/acme/private/resolve/main/config.json", "alice").status == 200  # group:ml
    assert get(team, "/acme/private/resolve/main/config.json", "carol").status == 200  # user:carol
    assert get(team, "/team/model/resolve/main/config.json", "carol").status == 404  # not in group ml
    info = get(team, "/api/models/acme/private", "alice").json()
    assert info["private"] is True


def test_a_token_limited_to_patterns_reaches_nothing_else(team: Team) -> None:
    assert get(team, "/acme/private/resolve/main/config.json", "limited").status == 200
    assert get(team, "/team/model/resolve/main/config.json", "limited").status == 404  # alice could, the token not


def test_hf_auth_whoami_prints_our_user(team: Team, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": team.server.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_TOKEN": team.tokens["alice"]}
    hf = Path(sys.executable).with_name("hf")
    p = subprocess.run([str(hf), "auth", "whoami"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "alice" in p.stdout and "ml" in p.stdout
    w = get(team, "/api/whoami-v2", "alice").json()
    assert w["name"] == "alice" and [o["name"] for o in w["orgs"]] == ["ml"]
    assert w["auth"]["accessToken"] == {"displayName": "alice-laptop", "role": "read"}
    assert get(team, "/api/whoami-v2").status == 401


def test_wget_with_a_token_in_the_url(team: Team, tmp_path: Path) -> None:
    out = tmp_path / "config.json"
    url = f"{team.server.url}/team/model/resolve/main/config.json?token={team.tokens['alice']}"
    p = subprocess.run(["wget", "-q", "-O", str(out), url], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == team.files["config.json"]
    p = subprocess.run(["wget", "-q", "-O", str(tmp_path / "x"), url.replace(team.tokens["alice"], team.tokens["bob"])],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 8  # wget's "server issued an error response"
    # the token is never written to the log, and never put into a link the server hands out
    assert team.tokens["alice"] not in team.server.log.read_text()
    r = get(team, f"/api/models/team/model/tree/main?limit=1&token={team.tokens['alice']}", "alice")
    assert team.tokens["alice"] not in json.dumps(r.headers)


def test_revoked_and_expired_tokens_are_refused_with_the_hubs_words(team: Team, tmp_path: Path) -> None:
    r = get(team, "/acme/public/resolve/main/config.json", "revoked")
    assert r.status == 401 and r.json()["error"] == "Invalid credentials in Authorization header"
    time.sleep(1.5)  # alice-short expires after a second
    r = get(team, "/acme/public/resolve/main/config.json", "expiring")
    assert r.status == 401 and r.json()["error"] == 'User Access Token "alice-short" is expired'
    code = """
from huggingface_hub import hf_hub_download
try:
    hf_hub_download("acme/public", "config.json")
    out({"got": "file"})
except Exception as e:
    out({"got": type(e).__name__, "text": str(e)})
"""
    res = run_client(code, team.server.url, tmp_path / "hf", env={"HF_TOKEN": team.tokens["expiring"]})
    assert res["got"] != "file" and "expired" in res["text"], res


def test_a_hugging_face_token_counts_as_anonymous(team: Team) -> None:
    hf_token = {"Authorization": "Bearer hf_" + "Ab3" * 12}
    assert raw(team.server.url, "GET", "/acme/public/resolve/main/config.json", hf_token).status == 200
    assert raw(team.server.url, "GET", "/team/model/resolve/main/config.json", hf_token).status == 401


# -- pull-through and offline keep every check --------------------------------------------------


def test_a_denied_client_never_causes_an_upstream_request(tmp_path: Path) -> None:
    hub = FakeHub().start()
    try:
        hub.commit("secret/weights", {"config.json": b"{}"})
        hub.commit("open/weights", {"config.json": b"{}"})
        data = tmp_path / "data"
        config = tmp_path / "c.toml"
        config.write_text('[access]\nanonymous = "read"\n[[access.rules]]\nrepos = ["secret/*"]\nread = ["group:ml"]\n')
        hm(data, "user", "add", "alice", "--group", "ml")
        hm(data, "user", "add", "bob")
        alice, bob = token(data, "a", "alice"), token(data, "b", "bob")
        for args in ((), ("--offline",)):
            s = Server(data, "--config", str(config), "--upstream", hub.url, *args)
            try:
                hub.reset_counters()
                for who in (None, bob):
                    h = {"Authorization": f"Bearer {who}"} if who else {}
                    for path in ("/secret/weights/resolve/main/config.json", "/api/models/secret/weights",
                                 "/api/models/secret/weights/tree/main", "/api/models/secret/weights/refs",
                                 "/api/mirror/models/secret/weights/check-update"):
                        r = raw(s.url, "GET", path, h)
                        assert r.headers.get("x-error-code") == "RepoNotFound", (args, path, r)
                assert hub.calls == [], (args, hub.calls)
                if not args:  # online, the allowed client is served through the upstream
                    r = raw(s.url, "GET", "/secret/weights/resolve/main/config.json", {"Authorization": f"Bearer {alice}"})
                    assert r.status == 200 and hub.calls
                    assert raw(s.url, "GET", "/open/weights/resolve/main/config.json").status == 200
                else:  # offline: what alice cached stays hers alone
                    r = raw(s.url, "GET", "/secret/weights/resolve/main/config.json", {"Authorization": f"Bearer {alice}"})
                    assert r.status == 200
                    assert raw(s.url, "GET", "/secret/weights/resolve/main/config.json").status == 401
            finally:
                s.stop()
    finally:
        hub.stop()


# -- rate limits ----------------------------------------------------------------------------------


def test_a_rate_limited_client_sees_the_hubs_429_and_succeeds_after_waiting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hm(data, "import", "acme/m", str(put(tmp_path / "src", {"config.json": b"{}", "a.txt": b"a", "b.txt": b"b"})))
    s = Server(data, env={"HUBMIRROR_LIMITS__RESOLVERS": "4/3s"})
    try:
        statuses = [raw(s.url, "HEAD", "/acme/m/resolve/main/config.json").status for _ in range(6)]
        assert statuses.count(429) >= 1 and statuses[:1] == [200], statuses
        r = raw(s.url, "HEAD", "/acme/m/resolve/main/config.json")
        if r.status == 429:
            assert r.headers["ratelimit"].startswith('"resolvers";r=0;t=')
            assert r.headers["ratelimit-policy"] == '"fixed window";"resolvers";q=4;w=3'
            assert int(r.headers["retry-after"]) >= 1
        time.sleep(3.2)
        code = """
from huggingface_hub import hf_hub_download
import time
t = time.monotonic()
paths = [hf_hub_download("acme/m", f) for f in ("config.json", "a.txt", "b.txt")]
out({"contents": [open(p).read() for p in paths], "took": time.monotonic() - t})
"""
        res = run_client(code, s.url, tmp_path / "hf")
        assert "error" not in res, res
        assert res["contents"] == ["{}", "a", "b"]
        assert res["took"] >= 1.0  # it was told to wait, and waited, then got everything
        assert "429" in s.log.read_text()
    finally:
        s.stop()


def test_a_gated_upstream_repo_mirrored_with_allow_gated_is_read_only_by_named_groups(tmp_path: Path) -> None:
    hub = FakeHub().start()
    try:
        hub.commit("meta/gated", {"config.json": b'{"gated": true}'})
        hub.repos[("model", "meta/gated")].gated = "manual"
        hub.commit("meta/open", {"config.json": b"{}"})
        data = tmp_path / "data"
        config = tmp_path / "c.toml"
        config.write_text('[access]\nanonymous = "read"\n[[access.rules]]\nrepos = ["meta/*"]\n'
                          'read = ["anyone", "group:approved"]\n[proxy]\nallow_gated = true\n')
        hm(data, "sync", "meta/gated", "--upstream", hub.url, "--allow-gated")
        hm(data, "user", "add", "ann", "--group", "approved")
        hm(data, "user", "add", "joe")
        ann, joe = token(data, "ann", "ann"), token(data, "joe", "joe")
        s = Server(data, "--config", str(config), "--upstream", hub.url)
        try:
            path = "/meta/gated/resolve/main/config.json"
            # "anyone" does not open a gated repo: only the group the rule names
            assert raw(s.url, "GET", path).status == 401
            assert raw(s.url, "GET", path, {"Authorization": f"Bearer {joe}"}).status == 404
            r = raw(s.url, "GET", path, {"Authorization": f"Bearer {ann}"})
            assert r.status == 200 and r.body == b'{"gated": true}'
            # the same for a gated repo met through pull-through (after its first, refused, request)
            hub.commit("meta/gated2", {"config.json": b"2"})
            hub.repos[("model", "meta/gated2")].gated = "auto"
            assert raw(s.url, "GET", "/meta/gated2/resolve/main/config.json").status == 401
            calls = len(hub.calls)
            assert raw(s.url, "GET", "/meta/gated2/resolve/main/config.json").status == 401
            assert len(hub.calls) == calls  # known gated now: refused before any upstream request
            assert raw(s.url, "GET", "/meta/gated2/resolve/main/config.json", {"Authorization": f"Bearer {ann}"}).body == b"2"
            assert raw(s.url, "GET", "/meta/open/resolve/main/config.json").status == 200
        finally:
            s.stop()
    finally:
        hub.stop()
