"""Hostile and malformed names at every route: each gets a 400 that says what was wrong,
and nothing is written anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Fixture
from helpers import Server, raw

BAD_REPO_IDS = [
    "..", "a..b", "a--b", "-abc", "abc-", ".abc", "abc.", "x.git", "%2e%2e", "a%2Fb", "a%00b", "a%0Ab", "a%20b",
    "a%5Cb", "x" * 97, "%C3%A9t%C3%A9", "%FF", "a*b", "a%3Bb", "a%3Cb%3E",
]
BAD_REVISIONS = [
    "..", "a..b", "%2E%2E", "%2Fetc", "main%2F", "a%2F%2Fb", "a%00b", "a%0Ab", "a%20b", "a~1", "a%5E", "a:b",
    "a%3Fb", "a*", "a%5Bb", "a%5Cb", ".hidden", "a.lock", "%40", "a%40%7B1%7D", "r" * 300, "%FF", "a%7F",
    "refs%2F..%2Fx",
]
BAD_FILE_PATHS = [
    "..%2Fetc%2Fpasswd", "../etc/passwd", "%2e%2e/x", "sub/../../x", "./x", "a/./b", "a//b", "/etc/passwd",
    "a%00b", "a%0Ab", "a%0D", "a%5Cb", "%5C%5Cserver%5Cshare", "C:%5Cwindows", "C:x", ".git/config",
    "x/.git/HEAD", "x%2F..%2Fy", "%FF%FE", "p" * 5000, "a%1Bb", "%E2%80%A8",
]
BAD_TREE_PATHS = ["..", "..%2F..%2Fetc", "a%2F%2Fb", "%2Fabs", "a%00", "a%5Cb", ".git", "x%2F.%2Fy", "%FF"]


def cases() -> list[tuple[str, str, str, bytes | None, str]]:
    out: list[tuple[str, str, str, bytes | None, str]] = []
    for rid in BAD_REPO_IDS:
        target = rid if "%2F" in rid or "/" in rid else f"acme/{rid}"
        out += [
            ("GET", f"/{target}/resolve/main/config.json", "", None, "repo id"),
            ("HEAD", f"/datasets/{target}/resolve/main/config.json", "", None, "repo id"),
            ("GET", f"/api/models/{target}", "", None, "repo id"),
            ("GET", f"/api/datasets/{target}/revision/main", "", None, "repo id"),
            ("GET", f"/api/spaces/{target}/tree/main", "", None, "repo id"),
            ("GET", f"/api/models/{target}/refs", "", None, "repo id"),
            ("GET", f"/api/models/{target}/commits/main", "", None, "repo id"),
            ("POST", f"/api/models/{target}/paths-info/main", "form", b"paths=a", "repo id"),
            ("GET", f"/api/mirror/models/{target}/check-update", "", None, "repo id"),
        ]
    for rev in BAD_REVISIONS:
        out += [
            ("GET", f"/acme/tiny/resolve/{rev}/config.json", "", None, "revision"),
            ("HEAD", f"/acme/tiny/resolve/{rev}/config.json", "", None, "revision"),
            ("GET", f"/api/models/acme/tiny/revision/{rev}", "", None, "revision"),
            ("GET", f"/api/models/acme/tiny/tree/{rev}", "", None, "revision"),
            ("GET", f"/api/models/acme/tiny/commits/{rev}", "", None, "revision"),
            ("POST", f"/api/models/acme/tiny/paths-info/{rev}", "form", b"paths=a", "revision"),
            ("GET", f"/api/mirror/models/acme/tiny/check-update?revision={rev}", "", None, "revision"),
        ]
    for p in BAD_FILE_PATHS:
        out += [
            ("GET", f"/acme/tiny/resolve/main/{p}", "", None, "path"),
            ("HEAD", f"/acme/tiny/resolve/main/{p}", "", None, "path"),
        ]
    for p in BAD_TREE_PATHS:
        out.append(("GET", f"/api/models/acme/tiny/tree/main/{p}", "", None, "path"))
    for p in ["../x", "/etc/passwd", "a\\b", "a\x00b", ".git/config", "a//b", "x/../../y"]:
        out.append(("POST", "/api/models/acme/tiny/paths-info/main", "json",
                    ('{"paths": ["%s"]}' % p.replace("\\", "\\\\").replace("\x00", "\\u0000")).encode(), "path"))
    out += [
        ("POST", "/api/models/acme/tiny/paths-info/main", "json", b"{not json", "JSON"),
        ("POST", "/api/models/acme/tiny/paths-info/main", "json", b'{"paths": "x"}', "JSON"),
        ("POST", "/api/models/acme/tiny/paths-info/main", "json", b'{"paths": [1]}', "path"),
        ("POST", "/api/models/acme/tiny/paths-info/main", "form", b"paths=%FF", "UTF-8"),
        ("GET", "/api/models/acme/tiny/tree/main?cursor=%FF%FF", "", None, "cursor"),
        ("GET", "/api/models/acme/tiny/commits/main?p=-1", "", None, "p"),
        ("GET", "/api/models/acme/tiny/commits/main?p=abc", "", None, "p"),
        ("GET", "/api/models/acme/tiny/tree/main?limit=x", "", None, "limit"),
    ]
    return out


ALL = cases()


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if "catalog.sqlite3" in f:
                continue  # readers touch the WAL index; its content is checked by the API tests
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_there_are_at_least_a_hundred_cases() -> None:
    assert len(ALL) >= 100


def test_every_bad_input_gets_a_clear_400_and_touches_nothing(server: Server, fixture_data: Fixture, tmp_path: Path) -> None:
    before = _listing(fixture_data.data)
    parent_before = sorted(os.listdir(fixture_data.data.parent))
    failures = []
    for method, path, kind, body, what in ALL:
        headers = {}
        if kind == "form":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif kind == "json":
            headers["Content-Type"] = "application/json"
        r = raw(server.url, method, path, headers, body)
        code = r.headers.get("x-error-code", "")
        msg = r.headers.get("x-error-message", "")
        ok = r.status == 400 and code.startswith("Invalid") and what.lower() in msg.lower()
        if method != "HEAD":
            ok = ok and what.lower() in r.json().get("error", "").lower()
        if not ok:
            failures.append((method, path[:120], r.status, code, msg[:160]))
    assert not failures, "\n".join(map(str, failures))
    assert _listing(fixture_data.data) == before
    assert sorted(os.listdir(fixture_data.data.parent)) == parent_before
    # the server is still healthy after all that
    assert raw(server.url, "GET", "/acme/tiny/resolve/main/config.json").status == 200


@pytest.mark.parametrize("path", ["/acme/tiny/resolve/main/config.json", "/api/models/acme/tiny/tree/main"])
def test_good_names_next_to_bad_ones_still_work(server: Server, path: str) -> None:
    assert raw(server.url, "GET", path).status == 200
