"""Who a request comes from: its address (behind `trusted_proxies`, the forwarded one) and its
token (`Authorization: Bearer ...`, or `?token=` on file URLs for curl and wget users).

* A Hugging Face token (`hf_...`, sent by clients logged in to the Hub) grants nothing here and
  is ignored: the request counts as anonymous. It is never stored, logged or forwarded.
* A hubmirror token (`hm_...`) is looked up by its sha256 (compared again in constant time),
  reused for a few seconds (a revocation through the admin API applies at once; one from the
  CLI of another process within that time); an unknown, revoked or malformed one is a 401 that
  names nothing, an expired one a 401 saying so, as the Hub does.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ..catalog import Catalog
from ..errors import Unauthorized
from ..model.access import Principal, Role, is_foreign_token, is_token, token_hash
from .http import ProxyTrust

log = logging.getLogger("hubmirror.auth")

INVALID = "Invalid credentials in Authorization header"  # the Hub's words; the client shows them as-is
CACHE_TTL = 5.0


class Authenticator:
    def __init__(self, catalog: Catalog, trust: ProxyTrust, *, ttl: float = CACHE_TTL) -> None:
        self.catalog = catalog
        self.trust = trust
        self.ttl = ttl
        self._cache: dict[str, tuple[Any, float]] = {}  # token hash -> (token row or None, until)
        self._used: dict[int, datetime] = {}

    def forget(self) -> None:
        """Drop every cached token (after a revocation in this process)."""
        self._cache.clear()

    def _credential(self, request: web.BaseRequest) -> str | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value or value != value.strip() or " " in value:
                raise Unauthorized(INVALID)
            return value
        raw = request.raw_path
        if "?" in raw and "token" in raw and "/resolve/" in raw.split("?", 1)[0]:  # curl/wget: ?token= on files
            values = request.rel_url.query.getall("token", [])
            if len(values) > 1:
                raise Unauthorized(INVALID)
            if values:
                return values[0]
        return None

    async def principal(self, request: web.BaseRequest) -> Principal:
        client = self.trust.client_address(request)
        token = self._credential(request)
        if token is None or is_foreign_token(token):
            return Principal(client=client)
        if not is_token(token):
            raise Unauthorized(INVALID)
        digest = token_hash(token)
        row = await self._lookup(digest)
        if row is None or row.revoked_at is not None or not hmac.compare_digest(getattr(row, "hash", digest), digest):
            raise Unauthorized(INVALID)
        if row.expires_at is not None and row.expires_at <= datetime.now(timezone.utc).replace(tzinfo=None):
            raise Unauthorized(f'User Access Token "{row.name}" is expired')
        self._used[row.id] = datetime.now(timezone.utc).replace(tzinfo=None)
        return Principal(client=client, user=row.user, groups=frozenset(row.groups), role=Role(row.role),
                         token=row.name, token_repos=tuple(row.repos) if row.repos else None,
                         expires_at=row.expires_at)

    async def _lookup(self, digest: str) -> Any:
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        row = await asyncio.to_thread(self.catalog.token_by_hash, digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (row, now + self.ttl)
        return row

    async def flush_usage(self) -> None:
        batch, self._used = self._used, {}
        if batch:
            await asyncio.to_thread(self.catalog.touch_tokens, batch)
