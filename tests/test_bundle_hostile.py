"""Hostile bundles: `import-bundle` validates the whole manifest and bounds the archive before it
writes a byte, and is all or nothing: a refused bundle leaves no blob, no temporary file and no
catalog row behind. Each bundle is built by hand (tarfile + json) so every variant is exact."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Fixture
from helpers import Server, raw

from hubmirror.catalog import Catalog
from hubmirror.model.names import RepoRef, RepoType

REPO = RepoRef(RepoType.MODEL, "acme/hostile")
CONFIG = b'{"model_type": "bert"}\n'
WEIGHTS = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
C1 = "1" * 40
C2 = "2" * 40

# Runs the real CLI and reports, on exit, its peak RSS and the bytes it wrote, from /proc/self. (Not
# getrusage's ru_maxrss: Linux carries it across execve, so it would include the pytest process.)
_MEASURED = """
import atexit, json, sys
def _stats():
    proc = {}
    for name in ("status", "io"):
        for line in open("/proc/self/" + name).read().splitlines():
            key, _, value = line.partition(":")
            proc[key] = value.strip()
    sys.stderr.write("@@STATS@@" + json.dumps({"rss_mb": int(proc["VmHWM"].split()[0]) / 1024,
                                               "wchar": int(proc["wchar"])}) + "\\n")
atexit.register(_stats)
sys.argv = ["hubmirror", *sys.argv[1:]]
from hubmirror.cli import main
main()
"""


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def git_oid(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


def hm(*args: str | Path, measured: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", _MEASURED] if measured else [sys.executable, "-m", "hubmirror"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300, check=False)


def stats(p: subprocess.CompletedProcess[str]) -> dict[str, float]:
    line = next(x for x in p.stderr.splitlines() if x.startswith("@@STATS@@"))
    return json.loads(line.removeprefix("@@STATS@@"))  # type: ignore[no-any-return]


def lfs_pointer(content: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(content)}\nsize {len(content)}\n".encode()


def entry(path: str, content: bytes | None, *, lfs: bool = False) -> list[Any]:
    """As the Hub lists it: an LFS file's oid is its pointer's git blob sha1, a regular file's its bytes'."""
    if content is None:
        return [path, "directory", "d" * 40, 0, None, False, None, None]
    if lfs:
        pointer = lfs_pointer(content)
        return [path, "file", git_oid(pointer), len(content), sha256(content), True, len(pointer), C1]
    return [path, "file", git_oid(content), len(content), sha256(content), False, None, C1]


def good_manifest() -> dict[str, Any]:
    """acme/hostile: a commit with a folder, a regular file and an LFS file; main and a tag point at it."""
    return {
        "format": "hubmirror-bundle",
        "version": 1,
        "created_at": "2025-01-02T03:04:05+00:00",
        "repos": [{
            "repo_type": "model", "repo_id": REPO.repo_id, "origin": "local",
            "commits": [{
                "sha": C1, "parents": [], "tree": "e" * 40, "title": "first", "message": "first\n\nbody",
                "author": "alice", "date": "2025-01-01T00:00:00+00:00",
                "entries": [entry("config.json", CONFIG), entry("sub", None),
                            entry("sub/weights.bin", WEIGHTS, lfs=True)],
            }],
            "refs": {"refs/heads/main": C1, "refs/tags/v1": C1},
        }],
        "blobs": [{"sha256": sha256(CONFIG), "size": len(CONFIG)}, {"sha256": sha256(WEIGHTS), "size": len(WEIGHTS)}],
    }


def good_blobs() -> list[tuple[str, bytes]]:
    return [(f"blobs/{sha256(CONFIG)}", CONFIG), (f"blobs/{sha256(WEIGHTS)}", WEIGHTS)]


def member(name: str, data: bytes, size: int | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    info.mode = 0o444
    return info


def write_bundle(path: Path, manifest: dict[str, Any] | bytes, blobs: list[tuple[str, bytes]] | None = None, *,
                 mode: str = "w") -> Path:
    doc = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.addfile(member("hubmirror-bundle.json", doc), io.BytesIO(doc))
        for name, data in good_blobs() if blobs is None else blobs:
            tar.addfile(member(name, data), io.BytesIO(data))
    return path


def stored_blobs(data: Path) -> set[str]:
    root = data / "blobs" / "sha256"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def tmp_files(data: Path) -> list[Path]:
    root = data / "blobs" / "tmp"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def catalog_rows(data: Path) -> dict[str, int]:
    db = sqlite3.connect(data / "catalog.sqlite3")
    try:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("repos", "commits", "entries", "refs", "ref_log", "audit_log")}
    finally:
        db.close()


def assert_nothing_left(data: Path, blobs_before: set[str] | None = None,
                        rows_before: dict[str, int] | None = None) -> None:
    assert stored_blobs(data) == (blobs_before or set()), "a refused bundle left blobs in the store"
    assert tmp_files(data) == [], "a refused bundle left temporary files"
    if rows_before is None:
        cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
        try:
            assert cat.list_repos() == [] and cat.all_commits() == [] and cat.all_refs() == []
            assert cat.audit_events(action="import-bundle") == []
        finally:
            cat.close()
    else:
        assert catalog_rows(data) == rows_before


def refused(bundle: Path, data: Path, needle: str, *flags: str, code: int = 2) -> dict[str, Any]:
    """Import with --json; it must fail with `code`, name the problem, print no traceback, and leave
    the data dir as it was (or empty)."""
    before = stored_blobs(data)
    rows = catalog_rows(data) if (data / "catalog.sqlite3").exists() else None
    p = hm("import-bundle", bundle, "--data", data, "--json", *flags)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "failed" and needle in out["error"], out
    assert needle in p.stderr
    assert_nothing_left(data, before, rows)
    return out  # type: ignore[no-any-return]


def imported(bundle: Path, data: Path, *flags: str) -> dict[str, Any]:
    p = hm("import-bundle", bundle, "--data", data, "--json", *flags)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "imported"
    return out  # type: ignore[no-any-return]


def _entries(m: dict[str, Any]) -> list[list[Any]]:
    return m["repos"][0]["commits"][0]["entries"]  # type: ignore[no-any-return]


def _set(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(m: dict[str, Any]) -> dict[str, Any]:
        fn(m)
        return m
    return apply


# (how the manifest is changed, what the error must say); the blob members stay the good ones
MANIFEST_CASES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "size-bigger-than-blob": (_set(lambda m: _entries(m)[0].__setitem__(3, len(CONFIG) + 1)),
                              f"'config.json' (repos[0].commits[0].entries[0]): size {len(CONFIG) + 1} disagrees"),
    "size-smaller-than-blob": (_set(lambda m: _entries(m)[2].__setitem__(3, 10)),
                               "'sub/weights.bin' (repos[0].commits[0].entries[2]): size 10 disagrees"),
    "blob-in-neither": (_set(lambda m: _entries(m)[0].__setitem__(4, sha256(b"elsewhere"))),
                        "neither in the bundle nor in this store"),
    "null-sha256-on-a-file": (_set(lambda m: _entries(m)[0].__setitem__(4, None)), "'config.json'"),
    "sha256-on-a-directory": (_set(lambda m: _entries(m)[1].__setitem__(4, sha256(CONFIG))),
                              "'sub' (repos[0].commits[0].entries[1]): a directory has no sha256"),
    "ref-to-unknown-commit": (_set(lambda m: m["repos"][0]["refs"].__setitem__("refs/heads/main", "9" * 40)),
                              f"ref refs/heads/main points at {'9' * 40}"),
    "size-ten": (_set(lambda m: _entries(m)[0].__setitem__(3, "ten")),
                 "repos[0].commits[0].entries[0].size: Input should be a valid integer (got 'ten')"),
    "size-true": (_set(lambda m: _entries(m)[0].__setitem__(3, True)),
                  "repos[0].commits[0].entries[0].size: Input should be a valid integer"),
    "size-float": (_set(lambda m: _entries(m)[0].__setitem__(3, 23.0)), "entries[0].size"),
    "size-negative": (_set(lambda m: _entries(m)[0].__setitem__(3, -1)),
                      "repos[0].commits[0].entries[0].size: Input should be greater than or equal to 0"),
    "lfs-not-bool": (_set(lambda m: _entries(m)[2].__setitem__(5, 1)), "entries[2].lfs"),
    "bad-date": (_set(lambda m: m["repos"][0]["commits"][0].__setitem__("date", "last tuesday")),
                 "repos[0].commits[0].date: not an ISO-8601 date (got 'last tuesday')"),
    "missing-title": (_set(lambda m: m["repos"][0]["commits"][0].pop("title")),
                      "repos[0].commits[0].title: Field required"),
    "extra-field": (_set(lambda m: m["repos"][0].__setitem__("private", True)),
                    "repos[0].private: Extra inputs are not permitted"),
    "duplicate-blob": (_set(lambda m: m["blobs"].append(dict(m["blobs"][0]))),
                       f"blobs[2]: {sha256(CONFIG)} is listed twice"),
    "unused-blob": (_set(lambda m: m["blobs"].append({"sha256": sha256(b"x"), "size": 1})), "used by no entry"),
    "short-entry": (_set(lambda m: _entries(m)[0].pop()), "entries[0].last_commit: Field required"),
    "dotdot-path": (_set(lambda m: _entries(m)[0].__setitem__(0, "../evil")), "entries[0].path"),
    "duplicate-path": (_set(lambda m: _entries(m).append(list(_entries(m)[0]))), "'config.json'"),
    "short-ref-name": (_set(lambda m: m["repos"][0]["refs"].__setitem__("main", C1)),
                       "repos[0].refs['main'] (the name): expected a full ref name"),
    "bad-repo-id": (_set(lambda m: m["repos"][0].__setitem__("repo_id", "acme/../x")), "repos[0].repo_id"),
    "bad-origin": (_set(lambda m: m["repos"][0].__setitem__("origin", "elsewhere")), "repos[0].origin"),
    "bad-oid": (_set(lambda m: _entries(m)[0].__setitem__(2, "G" * 40)),
                "entries[0].oid: expected 40 lowercase hex digits"),
    "bad-parent": (_set(lambda m: m["repos"][0]["commits"][0].__setitem__("parents", ["abc"])),
                   "repos[0].commits[0].parents[0]"),
    "version-2": (_set(lambda m: m.__setitem__("version", 2)), "version: this hubmirror reads bundles of version 1"),
    "version-true": (_set(lambda m: m.__setitem__("version", True)), "version: Input should be a valid integer"),
    "not-a-bundle": (_set(lambda m: m.__setitem__("format", "tar")), "format"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_manifest_that_lies_is_refused_whole_before_anything_is_written(case: str, tmp_path: Path) -> None:
    change, needle = MANIFEST_CASES[case]
    bundle = write_bundle(tmp_path / "b.tar", change(good_manifest()))
    data = tmp_path / "data"
    out = refused(bundle, data, needle)
    if case == "null-sha256-on-a-file":
        assert "sha256 is null" in out["error"]


def test_size_500_digits_and_a_size_beyond_any_number_are_refused(tmp_path: Path) -> None:
    doc = json.dumps(good_manifest()).replace(f", {len(CONFIG)}, ", ", " + "9" * 500 + ", ", 1)
    assert "9" * 500 in doc
    refused(write_bundle(tmp_path / "a.tar", doc.encode()), tmp_path / "a",
            "repos[0].commits[0].entries[0].size: Input should be less than or equal to 9223372036854775807")
    doc = json.dumps(good_manifest()).replace(f", {len(CONFIG)}, ", ", " + "9" * 100_000 + ", ", 1)
    refused(write_bundle(tmp_path / "b.tar", doc.encode()), tmp_path / "b", "Invalid JSON: number out of range")


def test_a_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    refused(write_bundle(tmp_path / "b.tar", b'{"format": "hubmirror-bundle", '), tmp_path / "d",
            "hubmirror-bundle.json: Invalid JSON")


def test_member_problems_are_refused_before_their_bytes_are_read(tmp_path: Path) -> None:
    (cfg_name, cfg), (w_name, w) = good_blobs()
    cases = {
        "unlisted member": ([(cfg_name, cfg), (w_name, w), ("blobs/" + sha256(b"extra"), b"extra")],
                            f"bundle member 'blobs/{sha256(b'extra')}' refused: not a blob listed in the manifest"),
        "member size differs": ([(cfg_name, cfg), (w_name, w + b"more")],
                                f"bundle member '{w_name}': size {len(w) + 4} differs from the manifest's {len(w)}"),
        "member twice": ([(cfg_name, cfg), (cfg_name, cfg), (w_name, w)], "appears twice"),
        "member missing": ([(cfg_name, cfg)], f"bundle lacks 1 blob(s) its manifest lists, e.g. {sha256(w)}"),
        "not a blob name": ([(cfg_name, cfg), ("weights.bin", w)], "'weights.bin' refused"),
    }
    for name, (members, needle) in cases.items():
        refused(write_bundle(tmp_path / f"{name}.tar", good_manifest(), members), tmp_path / name, needle)


def test_entry_and_listing_agree_on_a_wrong_size_the_bytes_still_decide(tmp_path: Path) -> None:
    m = good_manifest()
    _entries(m)[2][3] = len(WEIGHTS) - 1
    m["blobs"][1]["size"] = len(WEIGHTS) - 1
    pointer = lfs_pointer(WEIGHTS).replace(b"size %d" % len(WEIGHTS), b"size %d" % (len(WEIGHTS) - 1))
    _entries(m)[2][2], _entries(m)[2][6] = git_oid(pointer), len(pointer)  # the entry's oid agrees with the lie too
    short = WEIGHTS[:-1]  # the member carries the declared number of bytes, which do not hash to the name
    bundle = write_bundle(tmp_path / "b.tar", m, [good_blobs()[0], (f"blobs/{sha256(WEIGHTS)}", short)])
    refused(bundle, tmp_path / "d", f"bundle member 'blobs/{sha256(WEIGHTS)}': blob {sha256(WEIGHTS)}: "
                                    f"content hashes to {sha256(short)}")


def test_second_blob_failing_its_digest_removes_the_first(tmp_path: Path) -> None:
    (cfg_name, cfg), (w_name, w) = good_blobs()
    tampered = bytes([w[0] ^ 1]) + w[1:]
    bundle = write_bundle(tmp_path / "b.tar", good_manifest(), [(cfg_name, cfg), (w_name, tampered)])
    refused(bundle, tmp_path / "d", "hashes to")  # the config blob, published first, is gone again


def test_a_failed_import_never_deletes_blobs_that_were_already_stored(tmp_path: Path) -> None:
    data = tmp_path / "d"
    other = tmp_path / "other.tar"
    m = good_manifest()
    m["repos"][0]["repo_id"] = "acme/other"
    m["repos"][0]["commits"][0]["entries"] = [entry("config.json", CONFIG)]
    m["blobs"] = m["blobs"][:1]
    imported(write_bundle(other, m, good_blobs()[:1]), data)
    assert stored_blobs(data) == {sha256(CONFIG)}
    (cfg_name, cfg), (w_name, w) = good_blobs()
    bundle = write_bundle(tmp_path / "b.tar", good_manifest(), [(cfg_name, cfg), (w_name, w[:-1] + b"X")])
    refused(bundle, data, "hashes to")
    assert stored_blobs(data) == {sha256(CONFIG)}  # kept: acme/other uses it


def test_a_blob_the_store_already_has_need_not_travel_but_its_size_must_match(tmp_path: Path) -> None:
    data = tmp_path / "d"
    imported(write_bundle(tmp_path / "full.tar", good_manifest()), data)
    # a second commit whose blobs are all in the store: the bundle carries none
    m = good_manifest()
    c2 = copy.deepcopy(m["repos"][0]["commits"][0]) | {"sha": C2, "parents": [C1], "title": "second"}
    m["repos"][0]["commits"] = [c2]
    m["repos"][0]["refs"] = {"refs/heads/main": C2, "refs/tags/v1": C1}  # v1: a commit only the catalog has
    m["blobs"] = []
    out = imported(write_bundle(tmp_path / "thin.tar", m, []), data)
    assert out["blobs_new"] == 0
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    repo = cat.get_repo(REPO)
    assert repo is not None and cat.refs(repo) == {"refs/heads/main": C2, "refs/tags/v1": C1}
    cat.close()
    # the same, but an entry claims another size than the stored blob has
    m["repos"][0]["commits"][0]["sha"] = "3" * 40
    m["repos"][0]["commits"][0]["entries"][0][3] = len(CONFIG) + 5
    m["repos"][0]["refs"] = {"refs/heads/main": "3" * 40}
    refused(write_bundle(tmp_path / "liar.tar", m, []), data,
            f"size {len(CONFIG) + 5} disagrees with its blob {sha256(CONFIG)} of {len(CONFIG)} bytes")
    # a listing that disagrees with the store's copy
    m = good_manifest()
    m["blobs"][0]["size"] = len(CONFIG) + 1
    _entries(m)[0][3] = len(CONFIG) + 1
    refused(write_bundle(tmp_path / "liar2.tar", m, [(good_blobs()[0][0], CONFIG + b" "), good_blobs()[1]]), data,
            f"blobs[0]: {sha256(CONFIG)} is listed with {len(CONFIG) + 1} bytes, but this store's copy has "
            f"{len(CONFIG)}")


def test_a_good_bundle_imports_completely_and_serves_every_byte(tmp_path: Path) -> None:
    data = tmp_path / "d"
    out = imported(write_bundle(tmp_path / "b.tar.gz", good_manifest(), mode="w:gz"), data)
    assert out == {"status": "imported", "repos": 1, "commits": 1, "blobs": 2, "bytes": len(CONFIG) + len(WEIGHTS),
                   "blobs_new": 2}
    assert stored_blobs(data) == {sha256(CONFIG), sha256(WEIGHTS)} and tmp_files(data) == []
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    try:
        repo = cat.get_repo(REPO)
        assert repo is not None and repo.origin == "local"
        assert cat.refs(repo) == {"refs/heads/main": C1, "refs/tags/v1": C1}
        commit = cat.get_commit(repo, C1)
        assert commit is not None and commit.title == "first" and commit.date.isoformat() == "2025-01-01T00:00:00+00:00"
        files = {e.path: e.size for e in cat.list_entries(repo, C1, recursive=True, files_only=True)}
        assert files == {"config.json": len(CONFIG), "sub/weights.bin": len(WEIGHTS)}
        assert [e["detail"]["commits"] for e in cat.audit_events(REPO, "import-bundle")] == [1]
        assert {r["name"] for r in cat.ref_history(repo)} == {"refs/heads/main", "refs/tags/v1"}
    finally:
        cat.close()
    s = Server(data, "--offline")
    try:
        for path, content in (("config.json", CONFIG), ("sub/weights.bin", WEIGHTS)):
            r = raw(s.url, "GET", f"/acme/hostile/resolve/v1/{path}")
            assert r.status == 200 and r.body == content and r.headers["content-length"] == str(len(content))
    finally:
        s.stop()
    assert imported(write_bundle(tmp_path / "again.tar", good_manifest()), data)["blobs_new"] == 0


def test_a_repo_may_appear_once_per_exported_revision(fixture_data: Fixture, tmp_path: Path) -> None:
    bundle = tmp_path / "two.tar"
    p = hm("export", "acme/tiny@v1.0", "acme/tiny@main", "--data", fixture_data.data, "-o", bundle)
    assert p.returncode == 0, p.stderr
    with tarfile.open(bundle) as tar:
        doc = json.loads(tar.extractfile("hubmirror-bundle.json").read())  # type: ignore[union-attr]
    assert [r["repo_id"] for r in doc["repos"]] == ["acme/tiny", "acme/tiny"]
    data = tmp_path / "d"
    assert imported(bundle, data)["repos"] == 2
    cat = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    repo = cat.get_repo(RepoRef(RepoType.MODEL, "acme/tiny"))
    assert repo is not None
    refs = cat.refs(repo)
    cat.close()
    assert refs["refs/tags/v1.0"] == fixture_data.commits["v1"] and refs["refs/heads/main"] == fixture_data.commits["main"]
    # the same commit twice, but not the same: refused
    m = good_manifest()
    twin = copy.deepcopy(m["repos"][0])
    twin["commits"][0]["title"] = "another story"
    m["repos"].append(twin)
    refused(write_bundle(tmp_path / "twin.tar", m), tmp_path / "e",
            f"repos[1].commits[0]: acme/hostile commit {C1} is listed again with other content")


def test_a_manifest_over_the_limit_is_refused_with_little_memory(tmp_path: Path) -> None:
    # 500 MB of manifest (a valid JSON document: whitespace, then the good manifest) in a 0.5 MB gzip
    bundle = tmp_path / "huge-manifest.tar.gz"
    tail = json.dumps(good_manifest()).encode()
    size = 500_000_000

    class Spaces(io.RawIOBase):
        left = size - len(tail)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), self.left)
            b[:n] = b" " * n
            self.left -= n
            return n

    with tarfile.open(bundle, "w:gz", compresslevel=6) as tar:
        tar.addfile(member("hubmirror-bundle.json", b"", size=size),
                    io.BufferedReader(_Concat(Spaces(), io.BytesIO(tail)), 1 << 20))
    assert bundle.stat().st_size < 2_000_000
    data = tmp_path / "d"
    p = hm("import-bundle", bundle, "--data", data, measured=True)
    assert p.returncode == 2 and "bundle manifest is 500000000 bytes, more than the limit of 33554432" in p.stderr
    assert stats(p)["rss_mb"] < 300, stats(p)
    assert_nothing_left(data)
    # the limit is a flag: a 2 MB manifest under --max-manifest 1MiB
    m = good_manifest()
    m["repos"][0]["commits"][0]["message"] = "x" * 2_000_000
    refused(write_bundle(tmp_path / "m.tar", m), tmp_path / "d2", "more than the limit of 1048576 (--max-manifest)",
            "--max-manifest", "1MiB")
    imported(write_bundle(tmp_path / "m.tar", m), tmp_path / "d3")  # and under the default it is fine


class _Concat(io.RawIOBase):
    def __init__(self, *parts: io.RawIOBase | io.BytesIO) -> None:
        self.parts = list(parts)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self.parts:
            n = self.parts[0].readinto(b)
            if n:
                return n
            self.parts.pop(0)
        return 0


def test_an_oversized_pax_header_is_refused_with_little_memory(tmp_path: Path) -> None:
    # tarfile reads a pax header whole, into memory: 200 MB of one, in a tiny gzip
    pax = {"comment": " " * 200_000_000}
    doc = json.dumps(good_manifest()).encode()
    info = member("hubmirror-bundle.json", doc)
    info.pax_headers = pax
    bundle = tmp_path / "pax.tar.gz"
    with tarfile.open(bundle, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(doc))
    assert bundle.stat().st_size < 1_000_000
    p = hm("import-bundle", bundle, "--data", tmp_path / "a", measured=True)
    assert p.returncode == 2 and "tar headers run more than 1048576 bytes past the member before them" in p.stderr
    assert stats(p)["rss_mb"] < 300, stats(p)
    assert_nothing_left(tmp_path / "a")
    # after the manifest, on the second blob, while the manifest declares far more bytes than the header's
    zeros = bytes(300 << 20)
    m = good_manifest()
    _entries(m).append(entry("zeros.bin", zeros, lfs=True))
    m["blobs"].append({"sha256": sha256(zeros), "size": len(zeros)})
    doc = json.dumps(m).encode()
    bundle = tmp_path / "pax2.tar.gz"
    with tarfile.open(bundle, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member("hubmirror-bundle.json", doc), io.BytesIO(doc))
        for name, data in good_blobs():
            tar.addfile(member(name, data), io.BytesIO(data))
        info = member(f"blobs/{sha256(zeros)}", zeros)
        info.pax_headers = pax
        tar.addfile(info, io.BytesIO(zeros))
    del zeros, pax
    p = hm("import-bundle", bundle, "--data", tmp_path / "b", "--max-ratio", "0", measured=True)
    assert p.returncode == 2 and "tar headers run more than 1048576 bytes" in p.stderr, p.stderr
    assert stats(p)["rss_mb"] < 300, stats(p)
    assert_nothing_left(tmp_path / "b")  # the two blobs before it were published, and are gone again


def test_a_gzip_bomb_is_refused_before_any_byte_is_written(tmp_path: Path) -> None:
    zeros = bytes(200 << 20)  # 200 MiB of zeros: a valid blob, ~200 KB once gzipped
    m = good_manifest()
    _entries(m).append(entry("zeros.bin", zeros, lfs=True))
    m["blobs"].append({"sha256": sha256(zeros), "size": len(zeros)})
    bundle = write_bundle(tmp_path / "bomb.tar.gz", m, [*good_blobs(), (f"blobs/{sha256(zeros)}", zeros)],
                          mode="w:gz")
    del zeros
    on_disk = bundle.stat().st_size
    assert on_disk < 1_000_000
    data = tmp_path / "d"
    p = hm("import-bundle", bundle, "--data", data, "--json", measured=True)
    assert p.returncode == 2, p.stderr
    error = json.loads(p.stdout)["error"]
    assert f"from {on_disk} compressed bytes, more than 100 times (--max-ratio)" in error
    assert stats(p)["wchar"] < 20 << 20, stats(p)  # catalog creation only: none of the 200 MiB was written
    assert_nothing_left(data)
    # it is refused for its ratio alone: allowed a larger one, the same bundle imports
    out = imported(bundle, data, "--max-ratio", "0")
    assert out["blobs_new"] == 3 and sha256(bytes(200 << 20)) in stored_blobs(data)


def test_max_bytes_and_free_space_are_checked_before_writing(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b.tar", good_manifest())
    new = len(CONFIG) + len(WEIGHTS)
    refused(bundle, tmp_path / "a", f"would add {new} bytes of new blobs, more than --max-bytes 1000",
            "--max-bytes", "1000")
    refused(bundle, tmp_path / "b", "keeps 1125899906842624 in reserve", "--min-free", "1PiB", code=1)
    assert imported(bundle, tmp_path / "c", "--max-bytes", str(new))["blobs_new"] == 2


def test_a_damaged_archive_is_refused_cleanly(tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.tar.gz", good_manifest(), mode="w:gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) * 2 // 3])
    refused(cut, tmp_path / "a", "is damaged")
    plain = write_bundle(tmp_path / "good.tar", good_manifest()).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(plain[:8000])  # inside the weights member, after the config blob
    refused(cut, tmp_path / "b", "is damaged")
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(5000))
    p = hm("import-bundle", garbage, "--data", tmp_path / "c")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "bundle" in p.stderr, p.stderr


def test_a_database_failure_at_the_end_rolls_back_rows_and_blobs(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert hm("import-bundle", write_bundle(tmp_path / "empty.tar", good_manifest() | {"repos": [], "blobs": []}, []),
              "--data", data).returncode == 0  # creates the catalog
    db = sqlite3.connect(data / "catalog.sqlite3")
    db.execute("CREATE TRIGGER no_tags BEFORE INSERT ON refs WHEN NEW.name LIKE 'refs/tags/%' "
               "BEGIN SELECT RAISE(ABORT, 'tags are frozen here'); END")
    db.commit()
    db.close()
    out = refused(write_bundle(tmp_path / "b.tar", good_manifest()), data, "tags are frozen here", code=1)
    assert "nothing was recorded" in out["error"]


def test_ctrl_c_during_the_import_removes_what_it_published(tmp_path: Path) -> None:
    fifo = tmp_path / "bundle.tar"
    os.mkfifo(fifo)
    data = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "hubmirror", "import-bundle", str(fifo), "--data", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    doc = json.dumps(good_manifest()).encode()
    (cfg_name, cfg), (w_name, w) = good_blobs()
    done = threading.Event()

    head = io.BytesIO()  # the manifest, the config blob, then the weights but for their last 100 bytes
    tar = tarfile.open(fileobj=head, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - no end blocks
    tar.addfile(member("hubmirror-bundle.json", doc), io.BytesIO(doc))
    tar.addfile(member(cfg_name, cfg), io.BytesIO(cfg))
    head.write(member(w_name, w).tobuf(tarfile.PAX_FORMAT) + w[:-100])

    def feed() -> None:
        with open(fifo, "wb") as fh:
            fh.write(head.getvalue())
            fh.flush()
            done.wait(60)  # the rest of the weights never arrives

    t = threading.Thread(target=feed)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while sha256(CONFIG) not in stored_blobs(data):  # the first blob is published...
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # ...and the import is interrupted
        _out, err = proc.communicate(timeout=60)
    finally:
        done.set()
        t.join()
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert_nothing_left(data)


def test_scrub_reports_an_entry_whose_size_disagrees_with_its_blob(tmp_path: Path) -> None:
    data = tmp_path / "d"
    imported(write_bundle(tmp_path / "b.tar", good_manifest()), data)
    p = hm("scrub", "--data", data, "--json", "--no-repair")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["size_mismatch"] == []
    db = sqlite3.connect(data / "catalog.sqlite3")  # what an old, trusting import could have recorded
    db.execute("UPDATE entries SET size = size + 7 WHERE path = 'sub/weights.bin'")
    db.commit()
    db.close()
    p = hm("scrub", "--data", data, "--json", "--no-repair")
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout)
    assert report["corrupt"] == [] and report["checked"] == 2
    assert report["size_mismatch"] == [{"sha256": sha256(WEIGHTS), "recorded": len(WEIGHTS) + 7,
                                        "stored": len(WEIGHTS), "repo": "acme/hostile", "commit": C1,
                                        "path": "sub/weights.bin"}]
    p = hm("scrub", "--data", data, "--no-repair")
    assert p.returncode == 1 and f"size mismatch {sha256(WEIGHTS)}" in p.stdout and "sub/weights.bin" in p.stdout


# -- git object ids: what clients see as a regular file's ETag ----------------------------------

WHERE_CONFIG = f"acme/hostile commit {C1}: 'config.json' (repos[0].commits[0].entries[0])"
WHERE_WEIGHTS = f"acme/hostile commit {C1}: 'sub/weights.bin' (repos[0].commits[0].entries[2])"


def test_an_lfs_entry_whose_oid_is_not_its_pointers_is_refused(tmp_path: Path) -> None:
    m = good_manifest()
    _entries(m)[2][2] = git_oid(WEIGHTS)  # the bytes' sha1, not the pointer's: what a careless exporter writes
    out = refused(write_bundle(tmp_path / "b.tar", m), tmp_path / "d", f"{WHERE_WEIGHTS}: oid {git_oid(WEIGHTS)}")
    assert f"not the git blob sha1 of its LFS pointer, {git_oid(lfs_pointer(WEIGHTS))}" in out["error"]


def test_an_lfs_entry_whose_pointer_size_is_wrong_is_refused(tmp_path: Path) -> None:
    m = good_manifest()
    size = len(lfs_pointer(WEIGHTS))
    _entries(m)[2][6] = size + 1
    out = refused(write_bundle(tmp_path / "b.tar", m), tmp_path / "d", f"{WHERE_WEIGHTS}: pointer_size {size + 1}")
    assert f"not the size of its LFS pointer, {size}" in out["error"]
    _entries(m)[2][6] = None
    refused(write_bundle(tmp_path / "none.tar", m), tmp_path / "e", f"{WHERE_WEIGHTS}: pointer_size None")


def test_a_regular_entry_whose_oid_is_not_its_bytes_is_refused_as_the_blob_streams_in(tmp_path: Path) -> None:
    m = good_manifest()
    wrong = git_oid(CONFIG + b"\n")
    _entries(m)[0][2] = wrong
    # the weights (LFS) come first and are published; the config is refused before it is, and the weights go again
    bundle = write_bundle(tmp_path / "b.tar", m, list(reversed(good_blobs())))
    out = refused(bundle, tmp_path / "d", f"{WHERE_CONFIG}: oid {wrong} is not the git blob sha1 of its bytes")
    assert git_oid(CONFIG) in out["error"]
    # a second entry on the same blob that records another oid: one of them is wrong, and it is named
    m = good_manifest()
    _entries(m).append(entry("copy.json", CONFIG)[:2] + [wrong] + entry("copy.json", CONFIG)[3:])
    refused(write_bundle(tmp_path / "twice.tar", m), tmp_path / "e",
            f"acme/hostile commit {C1}: 'copy.json' (repos[0].commits[0].entries[3]): oid {wrong}")


def test_a_regular_entry_whose_oid_is_not_its_stored_blobs_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    imported(write_bundle(tmp_path / "full.tar", good_manifest()), data)
    blobs, rows = stored_blobs(data), catalog_rows(data)
    wrong = git_oid(b"something else")
    # a thin bundle: a new commit whose blobs are all in the store, one regular entry with a wrong oid
    m = good_manifest()
    c2 = copy.deepcopy(m["repos"][0]["commits"][0]) | {"sha": C2, "parents": [C1], "title": "second"}
    c2["entries"][0][2] = wrong
    m["repos"][0]["commits"] = [c2]
    m["repos"][0]["refs"] = {"refs/heads/main": C2}
    m["blobs"] = []
    where = f"acme/hostile commit {C2}: 'config.json' (repos[0].commits[0].entries[0])"
    refused(write_bundle(tmp_path / "thin.tar", m, []), data, f"{where}: oid {wrong} is not the git blob sha1 "
                                                               f"of its bytes, {git_oid(CONFIG)}")
    # the blob travels too, but the store's copy (what will be served) is the one that is hashed
    m["blobs"] = [{"sha256": sha256(CONFIG), "size": len(CONFIG)}]
    refused(write_bundle(tmp_path / "listed.tar", m, good_blobs()[:1]), data, f"{where}: oid {wrong}")
    assert_nothing_left(data, blobs, rows)
    # with the right oid, the same thin bundle imports
    c2["entries"][0][2] = git_oid(CONFIG)
    m["blobs"] = []
    assert imported(write_bundle(tmp_path / "good.tar", m, []), data)["blobs_new"] == 0

