"""The wire contract, checked header by header (HUB_PROTOCOL.md sections 0, 3 and 11)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import Fixture
from helpers import Server, raw

from hubmirror.model.gitobj import git_blob_sha1, lfs_pointer

TINY = "/acme/tiny/resolve"


def test_head_regular_file_has_commit_git_etag_and_length(server: Server, fixture_data: Fixture) -> None:
    r = raw(server.url, "HEAD", f"{TINY}/main/config.json", {"Accept-Encoding": "identity"})
    data = fixture_data.files["config.json"]
    assert r.status == 200
    assert r.headers["x-repo-commit"] == fixture_data.commits["main"]
    assert r.headers["etag"] == f'"{git_blob_sha1(data)}"'
    assert r.headers["content-length"] == str(len(data))
    assert "x-linked-etag" not in r.headers and "x-linked-size" not in r.headers
    assert not any(k.startswith("x-xet") for k in r.headers)
    assert "xet" not in r.headers.get("link", "")


def test_head_lfs_file_has_linked_sha256_and_size(server: Server, fixture_data: Fixture) -> None:
    data = fixture_data.files["weights.bin"]
    r = raw(server.url, "HEAD", f"{TINY}/main/weights.bin")
    sha = hashlib.sha256(data).hexdigest()
    assert r.status == 200
    assert r.headers["x-linked-etag"] == f'"{sha}"'
    assert r.headers["x-linked-size"] == str(len(data))
    assert r.headers["content-length"] == str(len(data))
    # size >= 10 MiB makes a file LFS even without a .gitattributes pattern
    big = raw(server.url, "HEAD", f"{TINY}/main/big.dat")
    assert big.headers["x-linked-etag"] == f'"{hashlib.sha256(fixture_data.files["big.dat"]).hexdigest()}"'


def test_get_and_ranges(server: Server, fixture_data: Fixture) -> None:
    data = fixture_data.files["weights.bin"]
    n = len(data)
    assert raw(server.url, "GET", f"{TINY}/main/weights.bin").body == data
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": "bytes=10-19"})
    assert r.status == 206 and r.body == data[10:20] and r.headers["content-range"] == f"bytes 10-19/{n}"
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": f"bytes={n - 3}-"})
    assert r.status == 206 and r.body == data[-3:]
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": "bytes=-4"})
    assert r.status == 206 and r.body == data[-4:] and r.headers["content-range"] == f"bytes {n - 4}-{n - 1}/{n}"
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": f"bytes=0-{n + 100}"})
    assert r.status == 206 and r.body == data
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": f"bytes={n}-"})
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{n}"
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": "bytes=5-1"})
    assert r.status == 200 and r.body == data  # invalid range is ignored
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": "bytes=0-1,5-6"})
    assert r.status == 200 and len(r.body) == n  # multi-range is answered with the whole file
    etag = hashlib.sha256(data).hexdigest()
    assert raw(server.url, "GET", f"{TINY}/main/weights.bin", {"If-None-Match": f'"{etag}"'}).status == 304
    r = raw(server.url, "GET", f"{TINY}/main/weights.bin", {"Range": "bytes=0-0", "If-Range": '"other"'})
    assert r.status == 200 and len(r.body) == n
    r = raw(server.url, "GET", f"{TINY}/main/empty.txt")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0"


def test_revisions_by_sha_tag_and_encoded_names(server: Server, fixture_data: Fixture) -> None:
    c = fixture_data.commits
    for rev, expect in [
        (c["v1"], c["v1"]),
        ("v1.0", c["v1"]),
        ("feature%2Fx", c["feature/x"]),
        ("refs%2Fpr%2F1", c["pr"]),
        ("refs%2Fheads%2Fmain", c["main"]),
        ("refs%2Ftags%2Fv1.0", c["v1"]),
    ]:
        r = raw(server.url, "HEAD", f"{TINY}/{rev}/config.json")
        assert r.status == 200, rev
        assert r.headers["x-repo-commit"] == expect, rev
    info = raw(server.url, "GET", "/api/models/acme/tiny/revision/refs%2Fpr%2F1")
    assert info.json()["sha"] == c["pr"]


def test_encoded_unicode_and_special_characters_in_paths(server: Server, fixture_data: Fixture) -> None:
    r = raw(server.url, "GET", f"{TINY}/main/with%20space%20%231.txt")
    assert r.status == 200 and r.body == fixture_data.files["with space #1.txt"]
    r = raw(server.url, "GET", f"{TINY}/main/donn%C3%A9es/%C3%A9.txt")
    assert r.status == 200 and r.body == fixture_data.files["données/é.txt"]


def test_error_codes(server: Server, fixture_data: Fixture) -> None:
    r = raw(server.url, "HEAD", "/acme/nope/resolve/main/config.json")
    assert r.status == 401 and r.headers["x-error-code"] == "RepoNotFound"
    r = raw(server.url, "GET", "/acme/nope/resolve/main/config.json")
    assert r.json()["error"].startswith("Repository not found")
    r = raw(server.url, "GET", f"{TINY}/nope/config.json")
    assert r.status == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    assert "error" in r.json()
    r = raw(server.url, "GET", f"{TINY}/main/nope.json")
    assert r.status == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert r.headers["x-repo-commit"] == fixture_data.commits["main"]
    r = raw(server.url, "GET", f"{TINY}/main/sub")  # a directory is not a file
    assert r.headers["x-error-code"] == "EntryNotFound"
    r = raw(server.url, "GET", "/api/models/acme/tiny/tree/main/nope")
    assert r.status == 404 and r.headers["x-error-code"] == "EntryNotFound"
    r = raw(server.url, "GET", "/api/models/acme/tiny/xet-read-token/main")
    assert r.status == 404 and "error" in r.json()
    r = raw(server.url, "GET", "/no/such/route")
    assert r.status == 404 and "error" in r.json()


def test_tree_pagination_links_are_absolute_and_follow_the_public_url(server: Server, fixture_data: Fixture) -> None:
    path = "/api/models/acme/many/tree/main?recursive=true&expand=false"
    seen: list[str] = []
    url_path = path
    pages = 0
    while True:
        r = raw(server.url, "GET", url_path)
        assert r.status == 200
        seen += [e["path"] for e in r.json()]
        pages += 1
        link = r.headers.get("link")
        if not link:
            break
        m = re.match(r'<(http://127\.0\.0\.1:\d+)(/[^>]*)>; rel="next"', link)
        assert m, link
        assert m.group(1) == server.url
        url_path = m.group(2)
    assert pages == 2
    assert len(seen) == len(set(seen)) == 1200 + 1 + 12
    # forwarded headers from a peer that is not a trusted proxy change nothing (test_hostile_clients.py
    # has the trusted case)
    r = raw(server.url, "GET", path, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hub.example.org",
                                       "X-Forwarded-Prefix": "/hf"})
    assert r.headers["link"].startswith(f"<{server.url}/api/models/acme/many/tree/main?")
    r = raw(server.url, "GET", path, {"X-Forwarded-Host": 'evil.example.org/x>; rel="next", <http://a'})
    assert r.status == 200 and r.headers["link"].startswith(f"<{server.url}/")
    # expand=true pages are smaller and carry lastCommit
    r = raw(server.url, "GET", "/api/models/acme/many/tree/main?recursive=true&expand=true")
    assert len(r.json()) == 50 and all("lastCommit" in e for e in r.json())


def test_tree_entries_match_git(server: Server, fixture_data: Fixture) -> None:
    r = raw(server.url, "GET", "/api/models/acme/tiny/tree/main?recursive=false")
    entries = {e["path"]: e for e in r.json()}
    w = fixture_data.files["weights.bin"]
    pointer = lfs_pointer(hashlib.sha256(w).hexdigest(), len(w))
    assert entries["weights.bin"]["oid"] == git_blob_sha1(pointer)
    assert entries["weights.bin"]["lfs"] == {"oid": hashlib.sha256(w).hexdigest(), "size": len(w), "pointerSize": len(pointer)}
    assert entries["weights.bin"]["size"] == len(w)
    assert entries["sub"]["type"] == "directory"
    assert "xetHash" not in json.dumps(r.json())
    sub = raw(server.url, "GET", "/api/models/acme/tiny/tree/main/sub%2Fdir").json()
    assert [e["path"] for e in sub] == ["sub/dir/file.txt"]
    sub2 = raw(server.url, "GET", "/api/models/acme/tiny/tree/main/sub/dir").json()
    assert sub2 == sub


def test_paths_info_accepts_form_and_json(server: Server, fixture_data: Fixture) -> None:
    form = raw(server.url, "POST", "/api/models/acme/tiny/paths-info/main",
               {"Content-Type": "application/x-www-form-urlencoded"},
               b"paths=config.json&paths=sub&paths=missing&expand=false")
    assert form.status == 200
    assert sorted(e["path"] for e in form.json()) == ["config.json", "sub"]
    js = raw(server.url, "POST", "/api/models/acme/tiny/paths-info/main", {"Content-Type": "application/json"},
             json.dumps({"paths": ["config.json"], "expand": True}).encode())
    assert js.json()[0]["lastCommit"]["id"] == fixture_data.commits["main"]


def test_commits_pagination_and_whoami(server: Server, fixture_data: Fixture) -> None:
    r = raw(server.url, "GET", "/api/models/acme/tiny/commits/main")
    assert [c["id"] for c in r.json()] == [fixture_data.commits["main"], fixture_data.commits["v1"]]
    assert r.json()[0]["message"] == "second version\n\nwith a body"
    assert r.headers["x-total-count"] == "2"
    assert raw(server.url, "GET", "/api/whoami-v2").status == 401
    # a Hugging Face token grants nothing here (the request counts as anonymous); a malformed one is refused
    assert raw(server.url, "GET", "/api/whoami-v2", {"Authorization": "Bearer hf_" + "a" * 34}).status == 401
    w = raw(server.url, "GET", "/api/models/acme/tiny/revision/main", {"Authorization": "Bearer hf_" + "a" * 34})
    assert w.status == 200
    w = raw(server.url, "GET", "/api/whoami-v2", {"Authorization": "Bearer hf_x"})
    assert w.status == 401 and w.json()["error"] == "Invalid credentials in Authorization header"


def test_single_segment_repo_ids(server: Server, fixture_data: Fixture) -> None:
    assert raw(server.url, "GET", "/api/models/tinygpt").json()["id"] == "tinygpt"
    assert raw(server.url, "GET", "/api/models/tinygpt/refs").json()["branches"][0]["name"] == "main"
    assert raw(server.url, "GET", "/api/models/tinygpt/tree/main").status == 200
    assert raw(server.url, "GET", "/tinygpt/resolve/main/config.json").status == 200


def test_dataset_and_info_query_options(server: Server, fixture_data: Fixture) -> None:
    r = raw(server.url, "GET", "/api/datasets/acme/ds/revision/main?blobs=true")
    assert r.json()["sha"] == fixture_data.commits["ds"]
    sib = {s["rfilename"]: s for s in r.json()["siblings"]}
    assert sib["data/train.csv"]["size"] > 0 and "blobId" in sib["data/train.csv"]
    r = raw(server.url, "GET", "/api/models/acme/tiny?expand=sha&expand=siblings")
    assert set(r.json()) == {"_id", "id", "sha", "siblings"}
    assert raw(server.url, "GET", "/datasets/acme/ds/resolve/main/data/train.csv").body.startswith(b"text,label")
    assert raw(server.url, "GET", "/api/models/acme/ds").headers["x-error-code"] == "RepoNotFound"


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_operational_endpoints(server: Server, path: str) -> None:
    raw(server.url, "GET", f"{TINY}/main/config.json")
    r = raw(server.url, "GET", path)
    assert r.status == 200
    if path == "/metrics":
        assert b"hubmirror_http_requests_total" in r.body


def test_spaces(server: Server, fixture_data: Fixture) -> None:
    info = raw(server.url, "GET", "/api/spaces/acme/demo")
    assert info.json()["sha"] == fixture_data.commits["space"] and info.json()["sdk"] == "gradio"
    assert raw(server.url, "GET", "/spaces/acme/demo/resolve/main/app.py").body == b"print(1)\n"
    assert raw(server.url, "GET", "/acme/demo/resolve/main/app.py").headers["x-error-code"] == "RepoNotFound"


def test_an_absolute_form_request_target_is_served_by_its_path(server: Server, fixture_data: Fixture) -> None:
    # HTTP/1.1 servers must accept `GET http://host/path` (routed by its path; links follow the
    # Host header, which http.client sets to that host, as for any request without public_url)
    r = raw(server.url, "GET", "http://other.example/acme/tiny/resolve/main/config.json")
    assert r.status == 200 and r.body == fixture_data.files["config.json"]
    r = raw(server.url, "GET", "http://other.example/api/models/acme/many/tree/main?recursive=true")
    assert r.status == 200 and r.headers["link"].startswith("<http://other.example/api/models/acme/many/tree/main?")
