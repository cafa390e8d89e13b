"""Client for an upstream Hub (huggingface.co, or another hubmirror).

* one pooled aiohttp session and a global cap on requests in flight;
* retries with exponential backoff and full jitter on connection errors, 408 and 5xx; on 429 it
  waits what `RateLimit: ...;t=N` or `Retry-After` says (the Hub allows ~1,000 API calls per
  5 minutes per token), and every request sent is counted;
* downloads follow redirects by hand: http(s) only, at most 5 hops, and the token goes only to
  the upstream's own origin, never to a CDN it redirects to; an interrupted body resumes with
  `Range` from the original resolve URL (signed CDN URLs expire);
* what the upstream says is validated like client input: paths, shas, sizes, links.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import orjson

from .. import __version__
from ..errors import (
    EntryNotFound,
    GatedRepo,
    HubMirrorError,
    InvalidInput,
    RepoNotFound,
    RevisionNotFound,
    UpstreamBadBody,
    UpstreamError,
    UpstreamUnavailable,
)
from ..model.entries import Commit, Entry
from ..model.names import RepoRef, is_commit_sha, validate_path

log = logging.getLogger("hubmirror.upstream")

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 5
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class UpstreamStats:
    """What this client cost the upstream; one per sync run or per server."""

    calls: int = 0
    bytes: int = 0
    retries: int = 0
    rate_limited: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def _origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return (u.scheme, (u.hostname or "").lower(), port)


def retry_after(resp: aiohttp.ClientResponse) -> float | None:
    """Seconds to wait from the Hub's `RateLimit` header or a standard `Retry-After`."""
    rl = resp.headers.get("RateLimit", "")
    m = re.search(r";\s*t=(\d+)", rl)
    if m:
        return float(m.group(1)) + 1
    ra = resp.headers.get("Retry-After")
    if ra:
        if ra.strip().isdigit():
            return float(ra.strip())
        try:
            when = email.utils.parsedate_to_datetime(ra)
            return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None
    return None


class HubClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_rate_limit_wait: float = 300.0,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        semaphore: asyncio.Semaphore | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._token = token
        # shared between the clients of one process, so the cap on upstream requests is global
        self._sem = semaphore or asyncio.Semaphore(max_concurrency)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_rate_limit_wait = max_rate_limit_wait
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self.stats = UpstreamStats()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
                headers={"User-Agent": f"hubmirror/{__version__}"},
                auto_decompress=False,
                read_bufsize=4 << 20,  # large reads: fewer wake-ups and thread hops per GiB
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests ---------------------------------------------------------------------------

    def _headers_for(self, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self._token and _origin(url) == self._origin:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    async def _backoff(self, attempt: int, wait: float | None, what: str) -> None:
        if wait is None:
            wait = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        self.stats.retries += 1
        log.info("upstream %s: retry %d in %.2fs", what, attempt + 1, wait)
        await asyncio.sleep(wait)

    async def _send(
        self, method: str, url: str, kind: str, *, headers: dict[str, str] | None = None, data: Any = None
    ) -> aiohttp.ClientResponse:
        """One request with retries; returns an open response (caller releases it)."""
        attempt = 0
        while True:
            self.stats.calls += 1
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
            try:
                resp = await self._sess().request(
                    method, url, headers=self._headers_for(url, headers), data=data, allow_redirects=False
                )
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError, aiohttp.ClientPayloadError) as e:
                if attempt >= self.max_retries:
                    # the exception text names hosts: it goes to the log (for operators), not into
                    # the message (which can reach clients)
                    log.warning("upstream %s unreachable: %r", _safe(url), e)
                    raise UpstreamUnavailable(f"upstream {_safe(url)} unreachable ({e.__class__.__name__})") from e
                await self._backoff(attempt, None, f"{kind} {e.__class__.__name__}")
                attempt += 1
                continue
            if resp.status not in RETRY_STATUS:
                return resp
            wait = retry_after(resp) if resp.status in (429, 503) else None
            body = (await resp.read())[:300]
            resp.release()
            if resp.status == 429:
                self.stats.rate_limited += 1
            if attempt >= self.max_retries or (wait is not None and wait > self.max_rate_limit_wait):
                what = "rate limited" if resp.status == 429 else f"answered {resp.status}"
                raise UpstreamUnavailable(f"upstream {what} for {_safe(url)}: {body.decode('utf-8', 'replace')}")
            await self._backoff(attempt, wait, f"{kind} {resp.status}")
            attempt += 1

    async def _json(self, url: str, kind: str, *, what: str) -> tuple[Any, aiohttp.ClientResponse]:
        async with self._sem:
            hops = 0
            while True:
                resp = await self._send("GET", url, kind)
                try:
                    if resp.status in (301, 302, 307, 308) and "Location" in resp.headers:
                        # the Hub redirects legacy single-segment ids; follow same-origin only
                        target = urljoin(url, resp.headers["Location"])
                        hops += 1
                        if _origin(target) != self._origin or hops > MAX_REDIRECTS:
                            raise UpstreamError(f"upstream redirected {what} to {_safe(target)}; not followed")
                        url = target
                        continue
                    if resp.status >= 400:
                        raise await self._error(resp, what)
                    body = await resp.read()
                    self.stats.bytes += len(body)
                    try:
                        return orjson.loads(body), resp
                    except orjson.JSONDecodeError as e:
                        raise UpstreamError(f"upstream sent invalid JSON for {what}") from e
                finally:
                    resp.release()

    async def _error(self, resp: aiohttp.ClientResponse, what: str) -> HubMirrorError:
        code = resp.headers.get("X-Error-Code", "")
        msg = resp.headers.get("X-Error-Message") or (await resp.read())[:300].decode("utf-8", "replace")
        if code == "RepoNotFound" or (resp.status == 401 and not code):
            return RepoNotFound(f"{what}: upstream says repository not found (or private/no access): {msg}")
        if code == "RevisionNotFound":
            return RevisionNotFound(f"{what}: upstream says revision not found: {msg}")
        if code == "EntryNotFound":
            return EntryNotFound(f"{what}: upstream says entry not found: {msg}", commit=resp.headers.get("X-Repo-Commit"))
        if code == "GatedRepo":
            return GatedRepo(f"{what}: upstream says the repo is gated: {msg}")
        if resp.status == 404:
            return RepoNotFound(f"{what}: upstream answered 404: {msg}")
        return UpstreamError(f"{what}: upstream answered {resp.status}: {msg}")

    def _api(self, ref: RepoRef, *tail: str) -> str:
        return f"{self.base_url}/api/{ref.repo_type.plural}/{ref.repo_id}" + "".join("/" + t for t in tail)

    # -- API --------------------------------------------------------------------------------

    async def repo_info(self, ref: RepoRef, revision: str) -> dict[str, Any]:
        data, _ = await self._json(self._api(ref, "revision", quote(revision, safe="")), "info", what=f"{ref}@{revision}")
        if not isinstance(data, dict) or not is_commit_sha(str(data.get("sha", ""))):
            raise UpstreamError(f"{ref}@{revision}: upstream repo info has no valid 'sha'")
        return data

    async def resolve(self, ref: RepoRef, revision: str) -> str:
        return str((await self.repo_info(ref, revision))["sha"])

    async def refs(self, ref: RepoRef) -> dict[str, str]:
        """Full ref name -> commit for branches, tags and converts."""
        data, _ = await self._json(self._api(ref, "refs"), "refs", what=f"{ref} refs")
        out: dict[str, str] = {}
        if not isinstance(data, dict):
            raise UpstreamError(f"{ref}: upstream refs answer is not an object")
        for key in ("branches", "tags", "converts"):
            for item in data.get(key) or []:
                name, commit = item.get("ref"), item.get("targetCommit")
                if isinstance(name, str) and isinstance(commit, str) and is_commit_sha(commit):
                    out[name] = commit
        return out

    async def _pages(
        self, url: str, kind: str, what: str, *, max_pages: int, must_end: bool
    ) -> AsyncIterator[list[Any]]:
        """Each JSON list page of a paginated answer, following `Link: rel="next"` on the upstream's
        own origin only. Past `max_pages`: an error if the listing `must_end`, else just stop."""
        for _ in range(max_pages):
            data, resp = await self._json(url, kind, what=what)
            if not isinstance(data, list):
                raise UpstreamError(f"{what}: upstream page is not a list")
            yield data
            nxt = resp.links.get("next")
            if not nxt:
                return
            target = urljoin(url, str(nxt["url"]))
            if _origin(target) != self._origin:
                raise UpstreamError(f"{what}: upstream pagination link leaves its origin ({_safe(target)})")
            url = target
        if must_end:
            raise UpstreamError(f"{what}: upstream pagination does not end")

    async def tree(self, ref: RepoRef, commit: str) -> list[Entry]:
        """Every file and directory of a commit (recursive), validated."""
        url = self._api(ref, "tree", commit) + "?recursive=true&expand=false"
        out: list[Entry] = []
        async for page in self._pages(url, "tree", f"{ref}@{commit[:8]} tree", max_pages=100_000, must_end=True):
            out.extend(_entry(item, ref, commit) for item in page)
        return out

    async def commits(self, ref: RepoRef, commit: str, max_pages: int = 20) -> list[Commit]:
        """The history from `commit`, newest first (at most `max_pages` upstream pages)."""
        url = self._api(ref, "commits", commit)
        out: list[Commit] = []
        async for page in self._pages(url, "commits", f"{ref}@{commit[:8]} commits", max_pages=max_pages,
                                      must_end=False):
            for item in page:
                if isinstance(item, dict) and is_commit_sha(str(item.get("id", ""))):
                    authors = item.get("authors") or []
                    author = str(authors[0].get("user", "")) if authors and isinstance(authors[0], dict) else ""
                    out.append(Commit(sha=str(item["id"]), title=str(item.get("title", ""))[:1000],
                                      message=str(item.get("message", ""))[:100_000], author=author[:200],
                                      date=_parse_time(item.get("date"))))
        for i, c in enumerate(out[:-1]):
            out[i] = Commit(c.sha, [out[i + 1].sha], c.title, c.message, c.author, c.date)
        return out

    async def commit_info(self, ref: RepoRef, commit: str) -> Commit:
        data, _ = await self._json(self._api(ref, "commits", commit), "commits", what=f"{ref}@{commit[:8]} commits")
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) or data[0].get("id") != commit:
            return Commit(commit)
        head = data[0]
        parents = [str(data[1]["id"])] if len(data) > 1 and is_commit_sha(str(data[1].get("id", ""))) else []
        authors = head.get("authors") or []
        author = str(authors[0].get("user", "")) if authors and isinstance(authors[0], dict) else ""
        return Commit(
            sha=commit,
            parents=parents,
            title=str(head.get("title", ""))[:1000],
            message=str(head.get("message", ""))[:100_000],
            author=author[:200],
            date=_parse_time(head.get("date")),
        )

    # -- files ------------------------------------------------------------------------------

    def file_url(self, ref: RepoRef, commit: str, path: str) -> str:
        return f"{self.base_url}/{ref.repo_type.url_prefix}{ref.repo_id}/resolve/{commit}/{quote(path)}"

    async def download(
        self,
        ref: RepoRef,
        commit: str,
        path: str,
        write: Callable[[bytes], Awaitable[None]],
        expected_size: int,
        *,
        max_resumes: int = 5,
    ) -> int:
        """Stream a file's bytes to `write`, resuming with Range after a cut. Returns bytes written.

        The caller verifies the digest; this checks the length.
        """
        url = self.file_url(ref, commit, path)
        progress = _Received()
        resumes = 0
        async with self._sem:
            while True:
                try:
                    await self._download_once(url, write, progress, expected_size, f"{ref}/{path}")
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                    if resumes >= max_resumes:
                        raise UpstreamUnavailable(
                            f"{ref}/{path}: download failed after {resumes} resumes at byte {progress.n} "
                            f"({e.__class__.__name__})"
                        ) from e
                    resumes += 1
                    self.stats.retries += 1
                    log.info("upstream %s/%s cut at %d, resuming", ref, path, progress.n)
                    await asyncio.sleep(min(self.backoff_max, self.backoff_base * resumes * random.random()))
                    continue
                if progress.n != expected_size:
                    raise UpstreamBadBody(f"{ref}/{path}: upstream sent {progress.n} bytes, expected {expected_size}")
                return progress.n

    async def _download_once(
        self, url: str, write: Callable[[bytes], Awaitable[None]], progress: _Received, expected: int, what: str
    ) -> None:
        offset = progress.n
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        hops = 0
        while True:
            resp = await self._send("GET", url, "file", headers=headers)
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                target = urljoin(url, resp.headers["Location"])
                resp.release()
                hops += 1
                if urlsplit(target).scheme not in ("http", "https"):
                    raise UpstreamError(f"{what}: upstream redirected to a non-http URL")
                if hops > MAX_REDIRECTS:
                    raise UpstreamError(f"{what}: more than {MAX_REDIRECTS} redirects")
                url = target  # the token is only attached when the origin is the upstream's
                continue
            break
        try:
            if resp.status >= 400:
                raise await self._error(resp, what)
            skip = 0
            if offset:
                if resp.status == 206:
                    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        raise UpstreamError(f"{what}: upstream answered a resume with the wrong range")
                else:
                    skip = offset  # a 200 to a Range request: the whole body again
            if resp.headers.get("Content-Encoding", "identity") not in ("identity", ""):
                raise UpstreamError(f"{what}: upstream sent an encoded body ({resp.headers['Content-Encoding']})")
            async for chunk in resp.content.iter_chunked(4 << 20):
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if progress.n + len(chunk) > expected:
                    raise UpstreamBadBody(f"{what}: upstream sent more than the expected {expected} bytes")
                await write(chunk)
                progress.n += len(chunk)  # counted as soon as written: a cut resumes exactly here
                self.stats.bytes += len(chunk)
            if progress.n < expected:
                raise aiohttp.ClientPayloadError(f"body ended at {progress.n} of {expected} bytes")
        finally:
            resp.release()


@dataclass
class _Received:
    n: int = 0


def _safe(url: str) -> str:
    """A URL fit for messages: no query string (signed CDN URLs carry credentials there) and no
    host (messages can reach clients, who should not learn the upstream's or its CDN's hosts)."""
    return urlsplit(url).path


def _parse_time(v: Any) -> datetime:
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(timezone.utc)


def _entry(item: Any, ref: RepoRef, commit: str) -> Entry:
    if not isinstance(item, dict):
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry is not an object")
    path = item.get("path")
    try:
        validate_path(str(path))
    except InvalidInput as e:
        raise UpstreamError(f"{ref}@{commit}: upstream listed an unsafe path: {e.message}") from None
    kind = item.get("type")
    oid = str(item.get("oid", ""))
    if kind == "directory":
        return Entry(str(path), "directory", oid if _SHA1.match(oid) else "0" * 40)
    if kind != "file":
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry {path!r} has type {kind!r}")
    size = item.get("size")
    if not isinstance(size, int) or size < 0 or not _SHA1.match(oid):
        raise UpstreamError(f"{ref}@{commit}: upstream tree entry {path!r} has no valid size/oid")
    lfs = item.get("lfs")
    if isinstance(lfs, dict):
        sha256 = str(lfs.get("oid", ""))
        if not _SHA256.match(sha256) or lfs.get("size") != size:
            raise UpstreamError(f"{ref}@{commit}: upstream LFS entry {path!r} has no valid sha256/size")
        ps = lfs.get("pointerSize")
        return Entry(str(path), "file", oid, size, sha256, True, ps if isinstance(ps, int) else None)
    return Entry(str(path), "file", oid, size, None, False, None)


