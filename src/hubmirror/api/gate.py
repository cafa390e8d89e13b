"""What every request passes before any route runs: the address allowlist, the token, and the
rate and bandwidth limits (`[access]`, `[limits]`). `/health` passes untouched.

Limits count per token, or per client address for requests without one (an IPv6 address by its
/64, so that a client cannot mint fresh budgets), in the Hub's two buckets: `resolvers` (file
requests) and `api` (everything else under /api/, the webhook excepted). A refusal is the Hub's
429 with `RateLimit`, `RateLimit-Policy` and `Retry-After`, which huggingface_hub waits out on
its own. A bandwidth limit paces the answer's bytes; unlimited clients keep sendfile.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from ..coord.limits import (
    Bandwidth,
    RateCounters,
    parse_bandwidth,
    parse_rate,
    ratelimit_headers,
)
from ..errors import Forbidden, RateLimited, Unauthorized
from ..model.access import Principal
from ..serve.stream import PACER
from .auth import Authenticator
from .http import raw_path


def _networks(cidrs: list[str]) -> list[Any]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def address_in(address: str, networks: list[Any]) -> bool:
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in networks)


def limit_key(who: Principal) -> str:
    if not who.anonymous:
        return f"token:{who.token}"
    try:
        addr = ipaddress.ip_address(who.client.split("%", 1)[0])
    except ValueError:
        return f"ip:{who.client}"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"ip:{addr.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network(f'{addr}/64', strict=False)}"
    return f"ip:{addr}"


def bucket_of(method: str, path: str) -> str | None:
    if "/resolve/" in path and method in ("GET", "HEAD"):
        return "resolvers"
    if path.startswith("/api/") and not path.startswith("/api/hooks/"):
        return "api"
    return None


class Gate:
    def __init__(self, access: Any, limits: Any, auth: Authenticator, counters: RateCounters,
                 bandwidth: Bandwidth) -> None:
        self.allow = _networks(access.allow_ips)
        self.admin_allow = _networks(access.admin_allow_ips)
        self.auth = auth
        self.counters = counters
        self.bandwidth = bandwidth
        rate = {k: parse_rate(v) if v else None for k, v in (
            ("api", limits.api), ("resolvers", limits.resolvers),
            ("anon_api", limits.anonymous_api or limits.api),
            ("anon_resolvers", limits.anonymous_resolvers or limits.resolvers))}
        self.rates = rate
        self.per_key = parse_bandwidth(limits.bandwidth) if limits.bandwidth else None
        self.per_conn = parse_bandwidth(limits.connection_bandwidth) if limits.connection_bandwidth else None
        self.limited = any(rate.values()) or self.per_key is not None or self.per_conn is not None
        self.refused = {"address": 0, "token": 0}  # requests refused, for /metrics
        self.rate_limited = {"api": 0, "resolvers": 0}

    async def admit(self, request: web.Request) -> Principal | None:
        """The request's principal, or an error (403, 401, 429). None for /health."""
        path = raw_path(request)
        if path in ("/health", "/ready"):
            return None
        client = self.auth.trust.client_address(request)
        if self.allow and not address_in(client, self.allow):
            self.refused["address"] += 1
            raise Forbidden("requests from this address are not allowed here")
        try:
            who = await self.auth.principal(request)
        except Unauthorized:
            self.refused["token"] += 1
            raise
        if not self.limited:
            return who
        bucket = bucket_of(request.method, path)
        if bucket is not None:
            rate = self.rates[("anon_" if who.anonymous else "") + bucket]
            if rate is not None:
                v = await self.counters.hit(limit_key(who), bucket, rate.limit, rate.window)
                if not v.allowed:
                    self.rate_limited[bucket] += 1
                    raise RateLimited(
                        f"rate limit reached: {v.limit} requests per {int(v.window)} s in '{bucket}'; "
                        f"retry in {v.retry_after} s", ratelimit_headers(v))
        if bucket == "resolvers" and (self.per_key is not None or self.per_conn is not None):
            pacer = self.bandwidth.pacer(limit_key(who), self.per_key, self.per_conn)
            if pacer is not None:
                request[PACER] = pacer
        return who

    def admin_address(self, request: web.Request) -> bool:
        return address_in(self.auth.trust.client_address(request), self.admin_allow)
