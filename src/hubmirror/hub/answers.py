"""What the upstream answers, validated like client input: tree entries, commits, dates, and how
long a 429 or 503 asks us to wait. (Split from client.py, which is about requests.)"""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timezone
from typing import Any

import aiohttp

from ..errors import InvalidInput, UpstreamError
from ..model.entries import Commit, Entry
from ..model.gitobj import lfs_pointer
from ..model.names import RepoRef, validate_path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def retry_after(resp: aiohttp.ClientResponse) -> float | None:
    """Seconds to wait from the Hub's `RateLimit` header or a standard `Retry-After`."""
    rl = resp.headers.get("RateLimit", "")
    m = re.search(r";\s*t=(\d{1,9})\b", rl)
    if m:
        return float(m.group(1)) + 1
    ra = resp.headers.get("Retry-After", "").strip()
    if ra:
        if ra.isdigit():
            return float(ra[:9])
        try:
            when = email.utils.parsedate_to_datetime(ra)
            return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None


def parse_time(v: Any) -> datetime:
    if isinstance(v, str) and len(v) < 64:
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
            return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


def parse_commit(item: dict[str, Any], sha: str) -> Commit:
    authors = item.get("authors") or []
    first = authors[0] if isinstance(authors, list) and authors else None
    author = str(first.get("user", "")) if isinstance(first, dict) else ""
    return Commit(sha=sha, title=str(item.get("title", ""))[:1000], message=str(item.get("message", ""))[:100_000],
                  author=author[:200], date=parse_time(item.get("date")))


def parse_entry(item: Any, ref: RepoRef, commit: str) -> Entry:
    if not isinstance(item, dict):
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry is not an object")
    path = item.get("path")
    if not isinstance(path, str):
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry has no path")
    try:
        validate_path(path)
    except InvalidInput as e:
        raise UpstreamError(f"{ref}@{commit}: upstream listed an unsafe path: {e.message}") from None
    kind = item.get("type")
    oid = str(item.get("oid", ""))
    if kind == "directory":
        return Entry(path, "directory", oid if _SHA1.match(oid) else "0" * 40)
    if kind != "file":
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry {path!r} has type {str(kind)[:50]!r}")
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 1 << 50 or not _SHA1.match(oid):
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry {path!r} has no valid size/oid")
    lfs = item.get("lfs")
    if isinstance(lfs, dict):
        sha256 = str(lfs.get("oid", ""))
        if not _SHA256.match(sha256) or lfs.get("size") != size:
            raise UpstreamError(f"{ref}@{commit}: upstream LFS entry {path!r} has no valid sha256/size")
        ps = lfs.get("pointerSize")
        if not isinstance(ps, int) or isinstance(ps, bool) or not 0 < ps < 1 << 20:
            ps = len(lfs_pointer(sha256, size))  # the standard pointer's length, as git-lfs writes it
        return Entry(path, "file", oid, size, sha256, True, ps)
    return Entry(path, "file", oid, size, None, False, None)
