"""Shared HTTP helpers: JSON and error answers in the Hub's wire format, the public base URL,
Range parsing, and a zero-copy blob response."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..errors import EntryNotFound, HubMirrorError, InvalidInput, StoreError
from ..store import BlobStore

EXPOSE = (
    "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,Accept-Ranges,"
    "Content-Range,X-Linked-Size,X-Linked-ETag"
)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def header_safe(text: str) -> str:
    """A header value cannot carry CR/LF or non-latin-1 text: escape them."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", "\\r").replace("\n", "\\n")


def error_response(err: HubMirrorError) -> web.Response:
    headers = {"X-Error-Message": header_safe(err.message)}
    if err.code:
        headers["X-Error-Code"] = err.code
    if isinstance(err, EntryNotFound) and err.commit:
        headers["X-Repo-Commit"] = err.commit
    return json_response({"error": err.message}, status=err.status, headers=headers)


_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~\-]+)*$")


def base_url(request: web.Request, public_url: str | None, trust_forwarded: bool) -> str:
    """The URL clients reach this server at, for absolute links (pagination, repo URLs)."""
    if public_url:
        return public_url.rstrip("/")
    h = request.headers
    scheme = request.scheme
    host = h.get("Host") or f"{request.url.host}:{request.url.port}"
    prefix = ""
    if trust_forwarded:
        scheme = h.get("X-Forwarded-Proto", scheme).split(",")[0].strip().lower()
        host = h.get("X-Forwarded-Host", host).split(",")[0].strip()
        prefix = h.get("X-Forwarded-Prefix", "").strip().rstrip("/")
    if scheme not in ("http", "https"):
        raise InvalidInput(f"invalid X-Forwarded-Proto {scheme!r}: expected http or https")
    if not _HOST_RE.match(host):
        raise InvalidInput(f"invalid Host or X-Forwarded-Host header {host!r}")
    if not _PREFIX_RE.match(prefix):
        raise InvalidInput(f"invalid X-Forwarded-Prefix header {prefix!r}")
    return f"{scheme}://{host}{prefix}"


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive


class RangeNotSatisfiable(Exception):
    pass


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range; None means "send everything".

    Syntactically invalid or multi-range headers are ignored (RFC 9110 allows that);
    a range that starts past the end raises RangeNotSatisfiable.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip().replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
        if start >= size:
            raise RangeNotSatisfiable
        return ByteRange(start, end)
    n = int(last)
    if n == 0:
        raise RangeNotSatisfiable
    return ByteRange(max(0, size - n), size)


def content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"


def guess_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


async def send_blob(
    request: web.Request,
    store: BlobStore,
    sha256: str,
    size: int,
    headers: dict[str, str],
    etag: str,
) -> web.StreamResponse:
    """HEAD/GET of a stored blob with Range, If-None-Match and If-Range, zero-copy when possible."""
    status = 200
    rng, early = await _negotiate(request, size, headers, etag)
    if early is not None:
        return early
    start, end = (rng.start, rng.end) if rng else (0, size)
    count = end - start
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
        await resp.prepare(request)
        it = store.read(sha256, start, end)
        while True:
            chunk = await asyncio.to_thread(next, it, None)
            if chunk is None:
                break
            await resp.write(chunk)
    await resp.write_eof()
    return resp


async def _negotiate(
    request: web.Request, size: int, headers: dict[str, str], etag: str
) -> tuple[ByteRange | None, web.StreamResponse | None]:
    """If-None-Match (304), If-Range and Range (416): the range to send, or a finished answer."""
    if request.headers.get("If-None-Match") and _etag_in(etag, request.headers["If-None-Match"]):
        resp = web.StreamResponse(status=304, headers={**headers, "ETag": f'"{etag}"'})
        await resp.prepare(request)
        return None, resp
    if_range = request.headers.get("If-Range")
    if if_range is not None and not _etag_in(etag, if_range):
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
        raise StoreError(f"blob {path.name} is missing from the store (deleted by hand? run hubmirror scrub)") from None
    try:
        await resp.prepare(request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        try:
            await loop.sendfile(transport, fh, start, count)
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
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or etag in tags


async def send_fill(
    request: web.Request, store: BlobStore, fill: Any, size: int, headers: dict[str, str], etag: str
) -> web.StreamResponse:
    """Stream a file that is being fetched from the upstream (see proxy/fill.py).

    Waits for the first byte before answering, so an upstream that fails at once gives the client
    a proper error. Holds back the final byte of the body until the blob is verified; on a failed
    verification or a cut upstream the connection is aborted, so the client never sees a clean end.
    """
    if fill.fd is None:  # a store without a local spool: wait for the whole blob
        await fill.done.wait()
        if fill.error is not None:
            raise fill.error
        return await send_blob(request, store, fill.sha256, size, headers, etag)
    rng, early = await _negotiate(request, size, headers, etag)
    if early is not None:
        return early
    start, end = (rng.start, rng.end) if rng else (0, size)
    await fill.wait_for(min(size, start + 1))
    if fill.error is not None:
        raise fill.error
    fd = fill.fd
    status = 206 if rng else 200
    if rng:
        headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = end - start
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    hold = 1 if end == size and end > start else 0
    pos = start
    loop = asyncio.get_running_loop()
    spool = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        return await _stream_fill(request, resp, fill, spool, loop, pos, end, hold)
    finally:
        spool.close()


async def _stream_fill(
    request: web.Request, resp: web.StreamResponse, fill: Any, spool: Any, loop: asyncio.AbstractEventLoop,
    pos: int, end: int, hold: int,
) -> web.StreamResponse:
    fd = spool.fileno()
    while pos < end - hold:
        target = min(end - hold, pos + CHUNK)
        if fill.written < target and not fill.done.is_set():
            await fill.wait_for(min(target, fill.written + 1))
        if fill.error is not None:
            _abort(request)
            return resp
        avail = min(fill.written, end - hold)
        if avail <= pos:
            if fill.done.is_set():
                _abort(request)
                return resp
            continue
        transport = request.transport
        if transport is None:
            return resp
        try:
            # zero-copy from the spool file, which the fill keeps writing behind us
            await loop.sendfile(transport, spool, pos, avail - pos)
        except NotImplementedError:
            data = await asyncio.to_thread(os.pread, fd, avail - pos, pos)
            await resp.write(data)
        pos = avail
    if hold:
        await fill.done.wait()
        if fill.error is not None:
            _abort(request)
            return resp
        data = await asyncio.to_thread(os.pread, fd, end - pos, pos)
        if len(data) != end - pos:
            _abort(request)
            return resp
        await resp.write(data)
    await resp.write_eof()
    return resp


CHUNK = 1 << 20


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
