"""Bodies: how a file's bytes reach a client. A stored blob goes out zero-copy (sendfile) from a
local store, streamed in ranges from another (object storage), or, if asked, as a 302 to a
presigned URL of the object store; a fill in flight streams from its spool file with the last byte
held back until the blob is verified. Range, If-None-Match and If-Range are negotiated here, once,
for all of them.

The read stack (serve/) hands the api a `Body` from `open_blob`; the route only calls `send`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from ..coord.limits import Pacer
from ..errors import (
    BlobNotFound,
    DigestMismatch,
    HubMirrorError,
    SizeMismatch,
    UpstreamError,
    UpstreamUnavailable,
)
from ..store import BlobStore

PACER = web.RequestKey("pacer", Pacer)  # set by the gate for clients with a bandwidth limit


class Body:
    """Where a file's bytes come from; `send` answers the request (Range and conditionals included)."""

    async def send(self, request: web.Request, size: int, headers: dict[str, str], etag: str) -> web.StreamResponse:
        raise NotImplementedError


class StoredBody(Body):
    """A stored blob. `redirect` (settings.store_redirect): answer a GET with a 302 to the store's
    presigned URL when the store can make one (see `send_blob`)."""

    def __init__(self, store: BlobStore, sha256: str | None, *, redirect: bool = False) -> None:
        self.store = store
        self.sha256 = sha256
        self.redirect = redirect

    async def send(self, request: web.Request, size: int, headers: dict[str, str], etag: str) -> web.StreamResponse:
        return await send_blob(request, self.store, self.sha256 or "", size, headers, etag, redirect=self.redirect)


class FillBody(Body):
    """A joined fill (proxy/fill.py FillReader): released when the answer ends, whatever happens."""

    def __init__(self, handle: Any, path: str) -> None:
        self.handle = handle
        self.path = path

    async def send(self, request: web.Request, size: int, headers: dict[str, str], etag: str) -> web.StreamResponse:
        return await send_fill(request, self.handle, size, headers, etag, path=self.path)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive


class RangeNotSatisfiable(Exception):
    pass


_RANGE_RE = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)", re.IGNORECASE | re.ASCII)
_HUGE = 10**18  # larger than any blob; digits past this are not converted (no 5,000-digit int())


def _digits(s: str) -> str:
    return s.lstrip("0") or "0"


def _number(digits: str) -> int:
    d = _digits(digits)
    return _HUGE if len(d) > 18 else int(d)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range; None means "send everything".

    Syntactically invalid, multi-range and reversed (`b < a`) headers are ignored, as RFC 9110
    allows; a range that starts at or past the end (or any range of an empty file) raises
    RangeNotSatisfiable. Only ASCII digits count; numbers of any length are compared without
    converting them whole.
    """
    if not header:
        return None
    m = _RANGE_RE.fullmatch(header.strip(" \t"))
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        if last:
            a, b = _digits(first), _digits(last)
            if (len(b), b) < (len(a), a):  # reversed: compared as numbers of any length
                return None
        start = _number(first)
        end = min(_number(last) + 1, size) if last else size
        if start >= size:
            raise RangeNotSatisfiable
        return ByteRange(start, end)
    n = _number(last)
    if n == 0 or size == 0:
        raise RangeNotSatisfiable
    return ByteRange(max(0, size - n), size)


async def send_blob(
    request: web.Request,
    store: BlobStore,
    sha256: str,
    size: int,
    headers: dict[str, str],
    etag: str,
    *,
    redirect: bool = False,
) -> web.StreamResponse:
    """HEAD/GET of a stored blob with Range, If-None-Match and If-Range: zero-copy from a local
    store, else streamed from `store.read`. With `redirect`, a GET (of a whole body or a Range) of
    a blob the store has a URL for is answered `302 Location: <presigned URL>` instead, carrying the
    headers clients read from that answer (see `_redirect`); HEAD is never redirected."""
    status = 200
    rng, early = await _negotiate(request, size, headers, etag)
    if early is not None:
        return early
    start, end = (rng.start, rng.end) if rng else (0, size)
    count = end - start
    if redirect and request.method == "GET" and count > 0:
        moved = await _redirect(request, store, sha256, headers)
        if moved is not None:
            return moved
    if rng is not None:
        status = 206
        headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = count
    if request.method == "HEAD" or count == 0:
        await resp.prepare(request)
        return resp
    path = store.local_path(sha256)
    if path is not None:
        await _sendfile(request, resp, path, start, count)
    else:
        await _stream(request, resp, store, sha256, start, end)
    await resp.write_eof()
    return resp


async def _redirect(
    request: web.Request, store: BlobStore, sha256: str, headers: dict[str, str]
) -> web.StreamResponse | None:
    """`302 Location: <presigned URL>`, or None to send the bytes from here.

    huggingface_hub reads a file's metadata from its HEAD (never redirected here) and then GETs
    the resolve URL, following this 302 to the object store's origin without its Authorization
    header (httpx strips it on a cross-origin hop; HUB_PROTOCOL.md 3.1/3.2); the client's Range
    goes along and the store answers 206. The answer still carries X-Repo-Commit, ETag,
    X-Linked-Etag, X-Linked-Size and Content-Disposition: a client that stops at a cross-origin
    3xx reads them from it. It must not be cached past the URL's life (the route's `immutable`
    Cache-Control is for the bytes). Sent from here instead: a request with If-Range, If-Match or
    If-Unmodified-Since (decided here against our ETag; the headers would follow the redirect, and
    the store has ETags of its own and may ignore If-Range: a stale If-Range would get a range of
    other bytes) and a client with a bandwidth limit (the mirror paces only what it sends itself)."""
    if any(h in request.headers for h in _STORE_CONDITIONALS):
        return None
    if request.get(PACER) is not None:
        return None
    url = await asyncio.to_thread(store.url, sha256, filename=_filename(headers))
    if url is None:
        return None
    moved = {k: v for k, v in headers.items() if k not in ("Content-Type", "Accept-Ranges", "Cache-Control")}
    moved["Location"] = url
    moved["Cache-Control"] = "no-store"
    resp = web.StreamResponse(status=302, headers=moved)
    resp.content_length = 0
    await resp.prepare(request)
    await resp.write_eof()
    return resp


_STORE_CONDITIONALS = ("If-Range", "If-Match", "If-Unmodified-Since")


def _filename(headers: dict[str, str]) -> str | None:
    """The file name of the route's Content-Disposition (filename*=UTF-8'' first), for the store's URL."""
    cd = headers.get("Content-Disposition")
    if not cd:
        return None
    m = re.search(r"filename\*=UTF-8''([^;\s]+)", cd)
    if m:
        return unquote(m.group(1))
    m = re.search(r'filename="([^"]*)"', cd)
    return m.group(1) if m else None


async def _stream(
    request: web.Request, resp: web.StreamResponse, store: BlobStore, sha256: str, start: int, end: int
) -> None:
    """Send [start, end) from `store.read` (object storage), a chunk at a time on a worker thread.
    The first chunk is read before the headers go out, so a missing blob is an error answer, not a
    cut connection."""
    pacer = request.get(PACER)
    it = store.read(sha256, start, end, chunk_size=CHUNK if pacer is None else min(CHUNK, pacer.chunk_size))
    try:
        chunk = await asyncio.to_thread(next, it, None)
        await resp.prepare(request)
        left = end - start
        while chunk is not None:
            if pacer is not None:
                await pacer.take(len(chunk))
            await resp.write(chunk)
            left -= len(chunk)
            chunk = await asyncio.to_thread(next, it, None)
        if left > 0:
            _abort(request)  # the store's blob is shorter than the catalog says: never a clean end
            raise ConnectionResetError(f"blob {sha256} shorter than recorded")
    finally:
        try:
            it.close()  # type: ignore[attr-defined]
        except (AttributeError, ValueError):  # not a generator / still running in its thread
            pass


async def conditional_answer(
    request: web.Request, size: int, headers: dict[str, str], etag: str
) -> web.StreamResponse | None:
    """A 304 (If-None-Match) or 416 (unsatisfiable Range) that needs no byte of the file: answered
    before any blob is opened, so that neither can make the mirror fetch a file."""
    _rng, early = await _negotiate(request, size, headers, etag)
    return early


def requested_start(request: web.BaseRequest, size: int, etag: str) -> int:
    """The first byte a GET will be answered from (0 for a whole body, a 304 or a 416)."""
    if request.method != "GET" or "Range" not in request.headers:
        return 0
    if request.headers.get("If-None-Match") and _etag_in(etag, request.headers["If-None-Match"]):
        return 0
    if_range = request.headers.get("If-Range")
    if if_range is not None and not _if_range_matches(etag, if_range):
        return 0
    try:
        rng = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        return 0
    return rng.start if rng else 0


async def _negotiate(
    request: web.Request, size: int, headers: dict[str, str], etag: str
) -> tuple[ByteRange | None, web.StreamResponse | None]:
    """If-None-Match (304), If-Range and Range (416): the range to send, or a finished answer."""
    if request.headers.get("If-None-Match") and _etag_in(etag, request.headers["If-None-Match"]):
        resp = web.StreamResponse(status=304, headers={**headers, "ETag": f'"{etag}"'})
        await resp.prepare(request)
        return None, resp
    if_range = request.headers.get("If-Range")
    if if_range is not None and not _if_range_matches(etag, if_range):
        return None, None
    try:
        return parse_range(request.headers.get("Range"), size), None
    except RangeNotSatisfiable:
        resp = web.StreamResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        resp.content_length = 0
        await resp.prepare(request)
        return None, resp


async def _sendfile(request: web.Request, resp: web.StreamResponse, path: Path, start: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        fh = await loop.run_in_executor(None, open, path, "rb")
    except FileNotFoundError:
        raise BlobNotFound(f"the content of this file (sha256 {path.name}) is missing from the mirror's store; an "
                           f"operator restores it with `hubmirror scrub --repair` (mirrored and cached files) or by "
                           f"importing the folder again (hosted files)") from None
    try:
        await resp.prepare(request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        pacer = request.get(PACER)
        try:
            if pacer is None:
                await loop.sendfile(transport, fh, start, count)  # unlimited: one zero-copy call
                sent_direct(request, count)
            else:
                pos, left = start, count
                while left > 0:  # a bandwidth limit: zero-copy still, a paced chunk at a time
                    n = min(left, pacer.chunk_size)
                    await pacer.take(n)
                    await loop.sendfile(transport, fh, pos, n)
                    sent_direct(request, n)
                    pos, left = pos + n, left - n
        except NotImplementedError:
            fh.seek(start)
            left = count
            while left > 0:
                chunk = await loop.run_in_executor(None, fh.read, min(left, 1 << 20))
                if not chunk:
                    raise ConnectionResetError("blob shorter than recorded")
                await resp.write(chunk)
                left -= len(chunk)
    finally:
        fh.close()


def _etag_in(etag: str, header: str) -> bool:
    """If-None-Match: a list, `*`, weak tags compared weakly (RFC 9110 13.1.2)."""
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or etag in tags


def _if_range_matches(etag: str, header: str) -> bool:
    """If-Range: exactly one strong entity tag, compared strongly (RFC 9110 13.1.5); a weak tag, a
    list, `*` or a date never match, so the whole body is sent."""
    return header.strip(" \t") == f'"{etag}"'


def _client_error(e: BaseException, path: str) -> HubMirrorError:
    """What a client whose fill failed before its first byte is told (a fresh object per client)."""
    if isinstance(e, (DigestMismatch, SizeMismatch)):
        return UpstreamError(f"the upstream's bytes of {path} failed verification; nothing was kept")
    if isinstance(e, HubMirrorError):
        return copy.copy(e)
    return UpstreamUnavailable(f"fetching {path} from the upstream stopped ({e.__class__.__name__})")


async def send_fill(
    request: web.Request, handle: Any, size: int, headers: dict[str, str], etag: str, *, path: str,
) -> web.StreamResponse:
    """Stream a file that is being fetched from the upstream (see proxy/fill.py).

    Waits for the first byte before answering, so an upstream that fails at once gives the client
    a proper error. Any response that carries bytes not verified yet holds back its last byte
    until the whole blob is verified (whole bodies and every Range alike); on a failed
    verification, a cut upstream or a stopped fill the connection is aborted, so no client ever
    sees a clean end of unverified bytes.
    """
    with handle:
        fill = handle.fill
        rng, early = await _negotiate(request, size, headers, etag)
        if early is not None:
            return early
        start, end = (rng.start, rng.end) if rng else (0, size)
        while fill.written < min(size, start + 1) and not fill.done.is_set():
            await fill.wait_change(1.0)
            _check_client(request)
        if fill.error is not None:
            raise _client_error(fill.error, path)
        status = 206 if rng else 200
        if rng:
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        if request.method == "HEAD" or end == start:
            await resp.write_eof()
            return resp
        if request.transport is not None:
            handle.abort = request.transport.abort  # a failed fill cuts this connection at once
        spool = os.fdopen(handle.fd, "rb", buffering=0, closefd=False)
        try:
            if await _stream_fill(request, resp, fill, spool, start, end):
                await resp.write_eof()
        finally:
            spool.close()
        return resp


def _check_client(request: web.Request) -> None:
    t = request.transport
    if t is None or t.is_closing():
        raise ConnectionResetError("the client went away")


async def _stream_fill(
    request: web.Request, resp: web.StreamResponse, fill: Any, spool: Any, pos: int, end: int
) -> bool:
    """Send [pos, end) as the fill writes it; False (connection aborted) if it ends unverified."""
    loop = asyncio.get_running_loop()
    fd = spool.fileno()
    journaled = False
    while pos < end:
        if fill.error is not None:
            _abort(request)
            return False
        if fill.verified:
            limit = end
        elif fill.bytes_ok or journaled or await fill.journaled():
            journaled = True
            limit = end - 1  # the last byte waits for the verdict (and the blob's publication)
        else:
            limit = pos  # the journal cannot be written (a full disk): nothing unverified goes out
        avail = min(fill.sendable, limit)  # unverified bytes: only what the journal covers
        if avail > pos:
            _check_client(request)
            pacer = request.get(PACER)
            count = min(avail - pos, CHUNK if pacer is None else min(CHUNK, pacer.chunk_size))
            if not fill.bytes_ok:
                fill.sent_unverified = True
                fill.sent_end = max(fill.sent_end, pos + count)
            await _send_chunk(request, resp, loop, spool, fd, pos, count)
            pos += count
            continue
        if fill.done.is_set():
            if fill.verified and fill.written >= end:
                continue
            _abort(request)  # ended without a verdict in favour (or shorter than listed): never clean
            return False
        if journaled and fill.written > fill.sendable:
            fill.want_checkpoint()
        await fill.wait_change(1.0)
        _check_client(request)
    return True


async def _send_chunk(request: web.Request, resp: web.StreamResponse, loop: asyncio.AbstractEventLoop,
                      spool: Any, fd: int, pos: int, count: int) -> None:
    """Zero-copy from the spool file, which the fill keeps writing behind us. A client that takes
    longer than SEND_IDLE for one chunk is cut: a stalled reader must not hold a deleted file."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    pacer = request.get(PACER)
    if pacer is not None:
        await pacer.take(count)  # before the idle clock: a paced wait is not a stalled client
    try:
        async with asyncio.timeout(SEND_IDLE):
            try:
                await loop.sendfile(transport, spool, pos, count)
                sent_direct(request, count)
            except NotImplementedError:
                await resp.write(await asyncio.to_thread(os.pread, fd, count, pos))
    except TimeoutError:
        _abort(request)
        raise ConnectionResetError("the client stopped reading") from None


SENT_DIRECT = web.RequestKey("sent_direct", int)  # bytes sent with sendfile(2), which aiohttp's count misses


def sent_direct(request: web.Request, n: int) -> None:
    request[SENT_DIRECT] = request.get(SENT_DIRECT, 0) + n


CHUNK = 1 << 20
SEND_IDLE = 60.0  # seconds one CHUNK may take to reach a client (at least ~17 KB/s)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
