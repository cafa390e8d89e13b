"""Client for an upstream Hub (huggingface.co, or another hubmirror).

* one pooled aiohttp session; two caps on requests in flight, shared by every client of the
  process: one for metadata calls and one for file bodies, so that API calls never queue behind
  bulk downloads. A slot is held only while a request is on the wire: never while waiting out a
  backoff or a 429;
* retries with exponential backoff and full jitter on connection errors, 408 and 5xx; on 429 it
  waits what `RateLimit: ...;t=N` or `Retry-After` says (the Hub allows ~1,000 API calls per
  5 minutes per token), and every request sent is counted;
* every answer is bounded: JSON bodies (`max_json`), error bodies (4 KiB are read, the rest is
  dropped with the connection), pages and entries of a listing, the total time of a metadata
  call, and the pace of a file body (`min_rate` bytes per second over `slow_window` seconds);
* downloads follow redirects by hand: http(s) only, no credentials in the URL, at most 5 hops,
  and the token goes only to the upstream's own origin, never to a CDN it redirects to; an
  interrupted body resumes with `Range` from the original resolve URL (signed CDN URLs expire);
* a circuit breaker (breaker.py) remembers an unreachable upstream, so fail-fast clients (the
  pull-through path) answer from the cache at once instead of paying a timeout per request;
* what the upstream says is validated like client input: paths, shas, sizes, links.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import orjson

from .. import __version__
from ..errors import (
    EntryNotFound,
    GatedRepo,
    HubMirrorError,
    RepoNotFound,
    RevisionNotFound,
    UpstreamBadBody,
    UpstreamError,
    UpstreamUnavailable,
)
from ..model.entries import Commit, Entry
from ..model.names import RepoRef, is_commit_sha
from .answers import parse_commit, parse_entry, retry_after
from .breaker import CircuitBreaker

log = logging.getLogger("hubmirror.upstream")

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 5
ERROR_BODY_MAX = 4096
MAX_PAGE_JSON = 4 << 20  # one page of a tree or commit listing
_NET_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError, aiohttp.ClientPayloadError)
T = TypeVar("T")


@dataclass
class UpstreamStats:
    """What this client cost the upstream; one per sync run or per server."""

    calls: int = 0
    bytes: int = 0
    retries: int = 0
    rate_limited: int = 0
    too_slow: int = 0  # file bodies aborted for not making minimum progress
    short_circuited: int = 0  # requests not sent because the breaker was open
    by_kind: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)  # "200", "429"... or "error" (no answer)

    def answered(self, status: str) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


@dataclass(frozen=True)
class Limits:
    """Bounds on what one upstream answer may cost us (settings `upstream_*`)."""

    max_json: int = 16 << 20
    max_entries: int = 100_000
    max_pages: int = 1_000
    api_timeout: float = 60.0
    min_rate: int = 8 << 10
    slow_window: float = 30.0


@dataclass
class Shared:
    """What every upstream client of one process shares: the two caps and the breaker."""

    api_slots: asyncio.Semaphore
    file_slots: asyncio.Semaphore
    breaker: CircuitBreaker | None = None

    @classmethod
    def make(cls, api: int, files: int, breaker: CircuitBreaker | None = None) -> Shared:
        return cls(asyncio.Semaphore(api), asyncio.Semaphore(files), breaker)


def _origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return (u.scheme, (u.hostname or "").lower(), port)


def _usable(url: str, what: str) -> str:
    """A URL the upstream pointed us at: http(s), a host, no credentials."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UpstreamError(f"{what}: upstream pointed at an invalid URL") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UpstreamError(f"{what}: upstream redirected to a non-http URL")
    if u.username is not None or u.password is not None:
        raise UpstreamError(f"{what}: upstream redirected to a URL with credentials in it; not followed")
    return url


async def _drop(resp: aiohttp.ClientResponse) -> bytes:
    """The first bytes of an answer we will not use (an error), then close its connection."""
    try:
        return await resp.content.read(ERROR_BODY_MAX)
    except _NET_ERRORS:
        return b""
    finally:
        resp.close()


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
        limits: Limits | None = None,
        shared: Shared | None = None,
        fail_fast: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._token = token
        self._shared = shared or Shared.make(max_concurrency, max_concurrency)
        self.fail_fast = fail_fast
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_rate_limit_wait = max_rate_limit_wait
        self.limits = limits or Limits()
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._api_timeout = aiohttp.ClientTimeout(
            total=self.limits.api_timeout, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self.stats = UpstreamStats()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._shared.breaker

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
                headers={"User-Agent": f"hubmirror/{__version__}"},
                auto_decompress=False,
                read_bufsize=4 << 20,  # large reads: fewer wake-ups and thread hops per GiB
                max_line_size=16 << 10,
                max_field_size=16 << 10,
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
        await asyncio.sleep(wait)  # no slot is held while waiting

    def _gate(self, url: str) -> None:
        b = self._shared.breaker
        if b is not None and self.fail_fast and not b.allow():
            self.stats.short_circuited += 1
            raise UpstreamUnavailable(
                f"upstream {_safe(url)} skipped: it failed recently ({b.reason}); next try in {b.retry_in():.0f}s"
            )

    def _failed(self, reason: str, wait: float | None = None, *, force: bool = False) -> None:
        if self._shared.breaker is not None:
            self._shared.breaker.failure(reason, wait=wait, force=force)

    def _answered(self) -> None:
        if self._shared.breaker is not None:
            self._shared.breaker.success()

    async def _request(
        self,
        url: str,
        kind: str,
        consume: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        headers: dict[str, str] | None = None,
        files: bool = False,
    ) -> T:
        """GET with retries. `consume` reads the answer (any status but a retried one) while this
        request holds its slot; the slot is released before every wait. A metadata answer cut or
        timing out mid-body is retried like a failed request; a file body is not (the download
        resumes it from where it stopped)."""
        slots = self._shared.file_slots if files else self._shared.api_slots
        attempt = 0
        while True:
            self._gate(url)
            wait: float | None = None
            async with slots:
                self.stats.calls += 1
                self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
                try:
                    if files:  # the body is paced by min_rate; the wait for its headers is bounded here
                        async with asyncio.timeout(self.limits.api_timeout):
                            resp = await self._sess().get(url, headers=self._headers_for(url, headers),
                                                          allow_redirects=False)
                    else:
                        resp = await self._sess().get(url, headers=self._headers_for(url, headers),
                                                      allow_redirects=False, timeout=self._api_timeout)
                except (aiohttp.InvalidURL, ValueError) as e:
                    raise UpstreamError(f"upstream URL {_safe(url)} is invalid") from e
                except _NET_ERRORS as e:
                    self.stats.answered("error")
                    failure = self._net_failure(e, url, kind, attempt)
                else:
                    self.stats.answered(str(resp.status))
                    if resp.status not in RETRY_STATUS:
                        if resp.status < 500:
                            self._answered()
                        try:
                            return await consume(resp)
                        except _NET_ERRORS as e:
                            if files:
                                raise
                            failure = self._net_failure(e, url, kind, attempt)
                        finally:
                            resp.release()  # closes the connection if the body was not read to its end
                    else:
                        wait = retry_after(resp) if resp.status in (429, 503) else None
                        body = await _drop(resp)
                        if resp.status == 429:
                            self.stats.rate_limited += 1
                        if resp.status == 429 or (resp.status in (502, 503, 504) and not files):
                            # a gateway error of the API says the upstream is down; a 500 or a failing
                            # file is about one request
                            self._failed(f"answered {resp.status}", wait if resp.status == 429 else None)
                        too_long = wait is not None and wait > self.max_rate_limit_wait
                        if attempt >= self.max_retries or too_long:
                            what = "rate limited" if resp.status == 429 else f"answered {resp.status}"
                            raise UpstreamUnavailable(f"upstream {what} for {_safe(url)}: "
                                                      f"{body[:300].decode('utf-8', 'replace')}")
                        failure = f"{kind} {resp.status}"
            await self._backoff(attempt, wait, failure)
            attempt += 1

    def _net_failure(self, e: BaseException, url: str, kind: str, attempt: int) -> str:
        """Count a connection error or timeout; raise UpstreamUnavailable when no retry is left."""
        # the exception text names hosts: it goes to the log (for operators), not into the
        # message (which can reach clients)
        scheme, host, port = _origin(url)
        log.warning("upstream %s://%s:%d%s unreachable: %s (attempt %d of %d)", scheme, host, port, _safe(url),
                    str(e) or e.__class__.__name__, attempt + 1, self.max_retries + 1)
        timed_out = isinstance(e, asyncio.TimeoutError)
        # a client waiting on a silent upstream has paid a whole timeout already
        self._failed(e.__class__.__name__, force=timed_out and self.fail_fast)
        if attempt >= self.max_retries or (timed_out and self.fail_fast):
            raise UpstreamUnavailable(f"upstream {_safe(url)} unreachable ({e.__class__.__name__})") from e
        return f"{kind} {e.__class__.__name__}"

    async def _read_json(self, resp: aiohttp.ClientResponse, what: str, limit: int) -> Any:
        name = "upstream_max_json" if limit == self.limits.max_json else "the limit for one listing page"
        if resp.content_length is not None and resp.content_length > limit:
            raise UpstreamError(f"{what}: upstream answer of {resp.content_length} bytes is larger than "
                                f"{name} ({limit})")
        parts: list[bytes] = []
        got = 0
        while chunk := await resp.content.read(1 << 20):
            got += len(chunk)
            if got > limit:
                raise UpstreamError(f"{what}: upstream answer is larger than {name} ({limit} bytes)")
            parts.append(chunk)
        body = b"".join(parts)
        self.stats.bytes += len(body)
        try:
            if len(body) > 256 << 10:  # parsing megabytes would stall every other request
                return await asyncio.to_thread(orjson.loads, body)
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise UpstreamError(f"upstream sent invalid JSON for {what}") from e

    async def _json(self, url: str, kind: str, *, what: str, limit: int | None = None) -> tuple[Any, dict[str, str]]:
        """A JSON answer (at most `limit` bytes, default upstream_max_json) and its `Link` targets,
        following same-origin redirects (the Hub redirects renamed repos)."""
        limit = limit or self.limits.max_json
        for _hop in range(MAX_REDIRECTS + 1):

            async def consume(resp: aiohttp.ClientResponse) -> tuple[str, Any, dict[str, str]]:
                if resp.status in (301, 302, 307, 308) and "Location" in resp.headers:
                    return "redirect", resp.headers["Location"], {}
                if resp.status >= 400:
                    raise await self._error(resp, what)
                links = {str(k): str(v.get("url", "")) for k, v in resp.links.items()}
                return "ok", await self._read_json(resp, what, limit), links

            state, value, links = await self._request(url, kind, consume)
            if state == "ok":
                return value, links
            target = _usable(urljoin(url, str(value)), what)
            if _origin(target) != self._origin:
                raise UpstreamError(f"upstream redirected {what} to {_safe(target)}; not followed")
            url = target
        raise UpstreamError(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def _error(self, resp: aiohttp.ClientResponse, what: str) -> HubMirrorError:
        code = resp.headers.get("X-Error-Code", "")[:100]
        msg = resp.headers.get("X-Error-Message", "")[:300] or (await _drop(resp))[:300].decode("utf-8", "replace")
        if code == "RepoNotFound" or (resp.status == 401 and not code):
            return RepoNotFound(f"{what}: upstream says repository not found (or private/no access): {msg}")
        if code == "RevisionNotFound":
            return RevisionNotFound(f"{what}: upstream says revision not found: {msg}")
        if code == "EntryNotFound":
            commit = resp.headers.get("X-Repo-Commit")
            return EntryNotFound(f"{what}: upstream says entry not found: {msg}",
                                 commit=commit if commit and is_commit_sha(commit) else None)
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
            items = data.get(key) or []
            if not isinstance(items, list):
                raise UpstreamError(f"{ref}: upstream refs answer has a malformed {key!r}")
            for item in items[: self.limits.max_entries]:
                if not isinstance(item, dict):
                    continue
                name, commit = item.get("ref"), item.get("targetCommit")
                if isinstance(name, str) and isinstance(commit, str) and is_commit_sha(commit) and len(name) <= 300:
                    out[name] = commit
        return out

    async def _pages(
        self, url: str, kind: str, what: str, *, max_pages: int, must_end: bool
    ) -> AsyncIterator[list[Any]]:
        """Each JSON list page of a paginated answer, following `Link: rel="next"` on the upstream's
        own origin only. Past `max_pages`: an error if the listing `must_end`, else just stop."""
        for _ in range(max_pages):
            # a page is a few hundred KB on the Hub: parsing megabytes per page costs memory per slot
            data, links = await self._json(url, kind, what=what, limit=min(self.limits.max_json, MAX_PAGE_JSON))
            if not isinstance(data, list):
                raise UpstreamError(f"{what}: upstream page is not a list")
            nxt = links.get("next")
            if nxt and not data:
                raise UpstreamError(f"{what}: upstream sent an empty page that links to another")
            yield data
            if not nxt:
                return
            target = _usable(urljoin(url, nxt), what)
            if _origin(target) != self._origin:
                raise UpstreamError(f"{what}: upstream pagination link leaves its origin ({_safe(target)})")
            url = target
        if must_end:
            raise UpstreamError(f"{what}: upstream listing has more than {max_pages} pages (upstream_max_pages)")

    async def tree(self, ref: RepoRef, commit: str) -> list[Entry]:
        """Every file and directory of a commit (recursive), validated and bounded."""
        url = self._api(ref, "tree", commit) + "?recursive=true&expand=false"
        out: list[Entry] = []
        what = f"{ref}@{commit[:8]} tree"
        limit = self.limits.max_entries
        async for page in self._pages(url, "tree", what, max_pages=self.limits.max_pages, must_end=True):
            if len(out) + len(page) > limit:
                raise UpstreamError(f"{what}: the upstream lists more than {limit} files and folders "
                                    f"(upstream_max_entries)")
            out.extend(parse_entry(item, ref, commit) for item in page)
        return out

    async def commits(self, ref: RepoRef, commit: str, max_pages: int = 20) -> list[Commit]:
        """The history from `commit`, newest first (at most `max_pages` upstream pages)."""
        url = self._api(ref, "commits", commit)
        out: list[Commit] = []
        async for page in self._pages(url, "commits", f"{ref}@{commit[:8]} commits", max_pages=max_pages,
                                      must_end=False):
            for item in page[:1000]:
                if isinstance(item, dict) and is_commit_sha(str(item.get("id", ""))):
                    out.append(parse_commit(item, str(item["id"])))
        for i, c in enumerate(out[:-1]):
            out[i] = Commit(c.sha, [out[i + 1].sha], c.title, c.message, c.author, c.date)
        return out

    async def commit_info(self, ref: RepoRef, commit: str) -> Commit:
        data, _ = await self._json(self._api(ref, "commits", commit), "commits", what=f"{ref}@{commit[:8]} commits")
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) or data[0].get("id") != commit:
            return Commit(commit)
        head = parse_commit(data[0], commit)
        parents = [str(data[1]["id"])] if len(data) > 1 and isinstance(data[1], dict) \
            and is_commit_sha(str(data[1].get("id", ""))) else []
        return Commit(head.sha, parents, head.title, head.message, head.author, head.date)

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

        The caller verifies the digest; this checks the length and the pace.
        """
        url = self.file_url(ref, commit, path)
        progress = _Received()
        resumes = 0
        what = f"{ref}/{path}"
        while True:
            try:
                await self._download_once(url, write, progress, expected_size, what)
            except _NET_ERRORS as e:
                if resumes >= max_resumes:
                    raise UpstreamUnavailable(
                        f"{what}: download failed after {resumes} resumes at byte {progress.n} "
                        f"({e.__class__.__name__})"
                    ) from e
                resumes += 1
                self.stats.retries += 1
                log.info("upstream %s cut at %d, resuming", what, progress.n)
                await asyncio.sleep(min(self.backoff_max, self.backoff_base * resumes * random.random()))
                continue
            if progress.n != expected_size:
                raise UpstreamBadBody(f"{what}: upstream sent {progress.n} bytes, expected {expected_size}")
            return progress.n

    async def _download_once(
        self, url: str, write: Callable[[bytes], Awaitable[None]], progress: _Received, expected: int, what: str
    ) -> None:
        offset = progress.n
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        for _hop in range(MAX_REDIRECTS + 1):

            async def consume(resp: aiohttp.ClientResponse) -> str | None:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    return resp.headers["Location"]
                await self._body(resp, write, progress, expected, what, offset)
                return None

            location = await self._request(url, "file", consume, headers=headers, files=True)
            if location is None:
                return
            url = _usable(urljoin(url, location), what)  # the token only goes to the upstream's origin
        raise UpstreamError(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def _body(
        self, resp: aiohttp.ClientResponse, write: Callable[[bytes], Awaitable[None]], progress: _Received,
        expected: int, what: str, offset: int,
    ) -> None:
        if resp.status >= 400:
            raise await self._error(resp, what)
        skip = 0
        if offset:
            if resp.status == 206:
                m = re.match(r"bytes (\d{1,19})-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    raise UpstreamError(f"{what}: upstream answered a resume with the wrong range")
            else:
                skip = offset  # a 200 to a Range request: the whole body again
        if resp.headers.get("Content-Encoding", "identity") not in ("identity", ""):
            raise UpstreamError(f"{what}: upstream sent an encoded body ({resp.headers['Content-Encoding'][:50]})")
        min_bytes = self.limits.min_rate * self.limits.slow_window
        window_end = time.monotonic() + self.limits.slow_window
        in_window = 0
        while True:
            try:
                async with asyncio.timeout(max(0.05, window_end - time.monotonic())):
                    chunk = await resp.content.read(4 << 20)
            except TimeoutError:
                chunk = None  # a window ended with nothing new: judge the pace below
            now = time.monotonic()
            if chunk == b"":
                break
            if chunk:
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        in_window += len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if progress.n + len(chunk) > expected:
                    raise UpstreamBadBody(f"{what}: upstream sent more than the expected {expected} bytes")
                await write(chunk)
                progress.n += len(chunk)  # counted as soon as written: a cut resumes exactly here
                self.stats.bytes += len(chunk)
                in_window += len(chunk)
            if now >= window_end:
                if in_window < min_bytes:  # one slow body says nothing about the API: no breaker
                    self.stats.too_slow += 1
                    raise UpstreamUnavailable(
                        f"{what}: upstream too slow ({in_window} bytes in {self.limits.slow_window:.0f}s, "
                        f"below upstream_min_rate)"
                    )
                window_end, in_window = now + self.limits.slow_window, 0
        if progress.n < expected:
            raise aiohttp.ClientPayloadError(f"body ended at {progress.n} of {expected} bytes")


@dataclass
class _Received:
    n: int = 0


def _safe(url: str) -> str:
    """A URL fit for messages: no query string (signed CDN URLs carry credentials there) and no
    host (messages can reach clients, who should not learn the upstream's or its CDN's hosts)."""
    try:
        return urlsplit(url).path[:300]
    except ValueError:
        return "(invalid URL)"
