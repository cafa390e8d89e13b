"""Outgoing webhooks (`[[notify]]`): the body of a delivery, its signature, one attempt, the backoff.

The body is JSON, the same bytes on every attempt of a delivery:

    {"event": "commit-mirrored", "delivery": "<uuid>", "event_id": 12, "time": "2025-01-02T03:04:05Z",
     "mirror": "https://hub.internal", "repo_id": "acme/model", "repo_type": "model", ...}

With a `secret`, `X-Hubmirror-Signature: sha256=<hex>` is the HMAC-SHA256 of exactly those bytes
under the secret. No token of any kind is ever sent, and no redirect is followed except a 307/308
to the same origin (at most 3). A URL's `user:password@` goes as Basic auth and, like its query,
never appears in a log line, the delivery log or an error message (`display_url`).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp

from .. import __version__
from ..catalog.events import EventRow
from .settings import NotifySettings, display_url

SIGNATURE_HEADER = "X-Hubmirror-Signature"
MAX_HOPS = 3
MAX_RETRY_AFTER = 3600.0


def body_for(event: EventRow, delivery: str, endpoint: str) -> bytes:
    doc = {**event.payload, "event": event.kind, "delivery": delivery, "event_id": event.id,
           "time": event.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "mirror": endpoint}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(secret: str, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `body` under `secret` (what a receiver recomputes)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers_for(target: NotifySettings, event: EventRow, delivery: str, attempt: int, body: bytes) -> dict[str, str]:
    h = {
        "Content-Type": "application/json",
        "User-Agent": f"hubmirror/{__version__}",
        "X-Hubmirror-Event": event.kind,
        "X-Hubmirror-Delivery": delivery,
        "X-Hubmirror-Timestamp": str(int(time.time())),
        "X-Hubmirror-Attempt": str(attempt),
    }
    if target.secret is not None:
        h[SIGNATURE_HEADER] = sign(target.secret.get_secret_value(), body)
    return h


@dataclass(frozen=True, slots=True)
class Attempt:
    delivered: bool
    retry: bool  # worth another attempt (no answer, 408, 429, 5xx)
    status: int | None
    error: str | None = None
    retry_after: float | None = None  # what a 429 or 503 asked for


def backoff(target: NotifySettings, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before the attempt after `attempt` (1-based): backoff, 2x, 4x... with 10% jitter,
    or longer if the receiver asked for it (Retry-After, at most an hour)."""
    delay: float = target.backoff * 2.0 ** (attempt - 1) * random.uniform(0.9, 1.1)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or (443 if p.scheme == "https" else 80)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def _connect_error(e: BaseException) -> str:
    """Why a connection failed, without the URL (which may hold a key in its query)."""
    os_error = getattr(e, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"cannot connect: {os_error.strerror}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection without answering"
    return f"cannot connect: {e.__class__.__name__}"


async def send(session: aiohttp.ClientSession, target: NotifySettings, body: bytes, headers: dict[str, str]) -> Attempt:
    """One attempt: POST `body` to the target, following only same-origin 307/308 redirects."""
    p = urlsplit(target.url)
    auth = aiohttp.BasicAuth(unquote(p.username), unquote(p.password or "")) if p.username else None
    host = p.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{p.port}" if p.port else "")
    url = urlunsplit((p.scheme, netloc, p.path or "/", p.query, ""))
    origin = _origin(url)
    timeout = aiohttp.ClientTimeout(total=target.timeout, connect=min(target.timeout, 10.0))
    for _hop in range(MAX_HOPS + 1):
        try:
            async with session.post(url, data=body, headers=headers, auth=auth, allow_redirects=False,
                                    timeout=timeout) as r:
                status = r.status
                if 200 <= status < 300:
                    return Attempt(True, False, status)
                if status in (307, 308):
                    location = r.headers.get("Location", "")
                    nxt = urljoin(url, location)
                    if location and _origin(nxt) == origin and not urlsplit(nxt).username:
                        url = nxt
                        continue
                    return Attempt(False, False, status, f"answered {status} with a redirect to another origin "
                                                         f"(not followed)")
                if 300 <= status < 400:
                    return Attempt(False, False, status, f"answered {status}, a redirect (only 307 and 308 to the "
                                                         f"same origin are followed)")
                try:
                    snippet = _printable((await asyncio.wait_for(r.content.read(200), 2)).decode("utf-8", "replace"))
                except (TimeoutError, aiohttp.ClientError):
                    snippet = ""
                retry = status >= 500 or status in (408, 429)
                wait = _retry_after(r.headers.get("Retry-After")) if status in (429, 503) else None
                return Attempt(False, retry, status, f"answered {status}" + (f": {snippet}" if snippet else ""), wait)
        except TimeoutError:
            return Attempt(False, True, None, f"no answer within {target.timeout:g} s")
        except aiohttp.ClientError as e:
            return Attempt(False, True, None, _connect_error(e))
        except OSError as e:
            return Attempt(False, True, None, f"cannot connect: {e.strerror or e.__class__.__name__}")
    return Attempt(False, False, None, f"more than {MAX_HOPS} redirects")


def describe(target: NotifySettings) -> str:
    """The target as logs name it."""
    shown = display_url(target.url)
    return shown if target.name == shown else f"{target.name} ({shown})"
