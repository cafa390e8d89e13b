"""Shared HTTP helpers: JSON and error answers in the Hub's wire format, the public base URL,
who a request comes from (trusted proxies), and file-name headers. (How bytes are sent lives in
serve/stream.py.)"""

from __future__ import annotations

import ipaddress
import mimetypes
import re
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..errors import (
    EntryNotFound,
    HubMirrorError,
    InvalidInput,
    RepoNotFound,
)

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


REPO_NOT_FOUND = "Repository not found"


def error_response(err: HubMirrorError, *, anonymous: bool = True) -> web.Response:
    """The Hub's error answer. A missing repo and one the client may not read answer alike: the
    same body, 401 without a token and 404 with one (the reason only goes to the log)."""
    message, status = err.message, err.status
    if isinstance(err, RepoNotFound):
        message, status = REPO_NOT_FOUND, (401 if anonymous else 404)
    headers = {"X-Error-Message": header_safe(message), **getattr(err, "headers", {})}
    if err.code:
        headers["X-Error-Code"] = err.code
    if isinstance(err, EntryNotFound) and err.commit:
        headers["X-Repo-Commit"] = err.commit
    return json_response({"error": message}, status=status, headers=headers)


_TOKEN_PARAM = re.compile(r"([?&]token=)[^&]*", re.IGNORECASE)


def redact(target: str) -> str:
    """A request target fit for a log line: a `?token=` value is never written anywhere."""
    return _TOKEN_PARAM.sub(r"\1***", target)


_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def raw_path(request: web.BaseRequest) -> str:
    """The undecoded path of the request target, without the query. An absolute-form target
    (`GET http://host/path`, which HTTP/1.1 servers must accept) counts by its path only: the
    host in it is not ours to believe."""
    target = _ABSOLUTE_FORM.sub("", request.raw_path, count=1) or "/"
    return target.split("?", 1)[0]


_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~\-]+)*$")


class ProxyTrust:
    """Whose `X-Forwarded-*` headers are believed: only peers in `trusted_proxies` (default:
    nobody), so that no client can choose the host of the links this server hands out (a cache in
    front would serve them to everyone) or spoof its address."""

    def __init__(self, networks: list[str]) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, peer: str | None) -> bool:
        if not self._nets or not peer:
            return False
        try:
            addr = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:10.0.0.5 when listening on ::
        return any(addr in n for n in self._nets)

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's address: the peer, or behind trusted proxies the last untrusted hop of
        `X-Forwarded-For` (at most 20 hops are looked at; a malformed one ends the walk)."""
        peer = request.remote or "-"
        if not self._nets or not self.trusts(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        client = peer
        for hop in reversed(hops[-20:]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return client  # a malformed chain: believe only what was seen up to here
            client = hop
            if not self.trusts(hop):
                return hop
        return client


def base_url(request: web.Request, public_url: str | None, trust: ProxyTrust) -> str:
    """The URL clients reach this server at, for absolute links (pagination, repo URLs)."""
    if public_url:
        return public_url.rstrip("/")
    h = request.headers
    scheme = request.scheme
    host = h.get("Host") or f"{request.url.host}:{request.url.port}"
    prefix = ""
    if trust.trusts(request.remote):
        scheme = h.get("X-Forwarded-Proto", scheme).split(",")[0].strip().lower()
        host = h.get("X-Forwarded-Host", host).split(",")[0].strip()
        prefix = h.get("X-Forwarded-Prefix", "").strip().rstrip("/")
    if scheme not in ("http", "https"):
        raise InvalidInput(f"invalid X-Forwarded-Proto {scheme[:100]!r}: expected http or https")
    if not _HOST_RE.match(host):
        raise InvalidInput(f"invalid Host or X-Forwarded-Host header {host[:300]!r}")
    if not _PREFIX_RE.match(prefix):
        raise InvalidInput(f"invalid X-Forwarded-Prefix header {prefix[:300]!r}")
    return f"{scheme}://{host}{prefix}"


def content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"


def guess_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


