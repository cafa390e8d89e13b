"""Request-rate counters and bandwidth pacing (issue 9, item 5; DESIGN.md principle 8).

Two seams for two kinds of limit:

* `RateCounters.hit` counts requests in fixed windows aligned to the epoch, like the Hub's
  "fixed window" policy, and says whether one more request fits. `MemoryRateCounters` is the one-box
  driver; a PostgreSQL driver can share the same counters between replicas (one upsert per hit:
  windows aligned to the epoch mean every replica agrees where a window starts).
  `ratelimit_headers` turns a verdict into the Hub's `RateLimit`, `RateLimit-Policy` and
  `Retry-After` headers, the ones huggingface_hub's backoff reads before it waits and retries.
* `Bandwidth.pacer` paces one response: a token bucket per key (every connection of a token or of a
  client address draws from it) and an optional cap per connection. Unlimited gets no pacer at all,
  so the caller keeps its sendfile path. Pacing is per process: sharing a byte budget between
  replicas would cost a round trip per chunk; divide the limit by the replica count instead.

Both are meant for one event loop (no locks: a hit never awaits between reading and writing a counter).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple, Protocol

__all__ = [
    "Bandwidth",
    "MemoryRateCounters",
    "Pacer",
    "Rate",
    "RateCounters",
    "Verdict",
    "parse_bandwidth",
    "parse_rate",
    "ratelimit_headers",
]

# ---------------------------------------------------------------------------------------------- parsing

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])?\s*")
_BYTE_UNITS = {
    "": 1, "B": 1,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}  # fmt: skip
_BANDWIDTH_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*(?:/\s*([A-Za-z]+))?\s*")


class Rate(NamedTuple):
    """`limit` requests per `window` seconds (fields named as `RateCounters.hit` takes them)."""

    limit: int
    window: float


def parse_rate(text: str) -> Rate:
    """`"1000/5m"` -> `Rate(1000, 300.0)`. The window is a number with a unit `s`, `m`, `h` or `d`, a
    bare unit (`"10/m"`), or a bare number of seconds (`"100/30"`)."""
    m = _RATE_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None or (m[2] is None and m[3] is None):
        raise ValueError(
            f"invalid rate {text!r}: expected COUNT/WINDOW such as '1000/5m', '10/s' or '100/30'"
            " (window units s, m, h, d; a bare number is seconds)"
        )
    count = int(m[1])
    window = float(m[2] or 1) * _UNIT_SECONDS[m[3] or "s"]
    if count < 1:
        raise ValueError(f"invalid rate {text!r}: the count must be at least 1")
    if window <= 0:
        raise ValueError(f"invalid rate {text!r}: the window must be longer than 0 seconds")
    return Rate(count, window)


def parse_bandwidth(text: str) -> int:
    """`"50MiB/s"` -> 52428800 bytes per second. Units B, KB (kB), MB, GB (powers of 1000) and KiB,
    MiB, GiB (powers of 1024); a bare number is bytes. Per second only."""
    m = _BANDWIDTH_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"invalid bandwidth {text!r}: expected an amount per second such as '50MiB/s'")
    number, unit, per = m[1], m[2], m[3]
    if unit not in _BYTE_UNITS:
        raise ValueError(
            f"invalid bandwidth {text!r}: unknown unit {unit!r}"
            " (use B, KB, MB, GB, KiB, MiB or GiB: bytes, not bits)"
        )
    if per is None or per.lower() not in ("s", "sec"):
        raise ValueError(f"invalid bandwidth {text!r}: give it per second, such as '{number}{unit}/s'")
    value = round(float(number) * _BYTE_UNITS[unit])
    if value < 1:
        raise ValueError(f"invalid bandwidth {text!r}: must be at least 1 byte per second")
    return value


# ------------------------------------------------------------------------------------ request counters


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 3x to build, on every request
class Verdict:
    """The answer to one hit. `remaining` counts what is left in this window after this hit;
    `reset_in` is the number of seconds until the window ends."""

    allowed: bool
    remaining: int
    reset_in: float
    limit: int
    window: float
    bucket: str

    def __bool__(self) -> bool:
        raise TypeError("a Verdict has no truth value: test verdict.allowed")

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait before the next window (at least 1)."""
        return max(1, math.ceil(self.reset_in))


class RateCounters(Protocol):
    """Fixed-window request counters (the coordination seam: memory today, PostgreSQL for replicas).

    `key` names who is counted (`"token:NAME"`, `"ip:ADDRESS"`), `bucket` the budget (`"api"`,
    `"resolvers"`: a name of letters, digits and `_`, as the Hub's headers need). Windows are aligned
    to the epoch, so a window of 300 s resets at every multiple of 300 s of Unix time. A refused hit
    does not count."""

    async def hit(self, key: str, bucket: str, limit: int, window: float) -> Verdict: ...


_BUCKET_RE = re.compile(r"\w+", re.ASCII)


class _Table:
    """The counters of one (bucket, window) in the current window, oldest-touched first."""

    __slots__ = ("counts", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.counts: dict[str, int] = {}


class MemoryRateCounters:
    """`RateCounters` for one process.

    Memory: each (bucket, window) keeps a dict of the keys seen in the current window only; when the
    window turns, the whole dict is dropped at once (no per-key expiry work). Within one window, at
    most `max_keys` keys per (bucket, window): beyond that the least recently seen eighth is forgotten
    (those clients start again from zero: failing open under a flood of addresses, rather than shutting
    everyone out). Buckets are names from the configuration, not from clients."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys!r}")
        self._max_keys = max_keys
        self._clock = clock
        self._tables: dict[tuple[str, float], _Table] = {}

    def __len__(self) -> int:
        """How many counters are held (all buckets)."""
        return sum(len(t.counts) for t in self._tables.values())

    async def hit(self, key: str, bucket: str, limit: int, window: float) -> Verdict:
        return self.hit_now(key, bucket, limit, window)

    def hit_now(self, key: str, bucket: str, limit: int, window: float) -> Verdict:
        """`hit` without the coroutine, for callers that are not async (same semantics)."""
        if limit < 1:
            raise ValueError(f"invalid rate limit {limit!r} for bucket {bucket!r}: at least 1")
        now = self._clock()
        table = self._tables.get((bucket, window))
        if table is None:
            if not _BUCKET_RE.fullmatch(bucket):
                raise ValueError(f"invalid rate-limit bucket {bucket!r}: letters, digits and _ only")
            if not window > 0:
                raise ValueError(f"invalid rate-limit window {window!r}s for bucket {bucket!r}")
            table = self._tables[(bucket, window)] = _Table(int(now // window))
        index = int(now // window)
        if table.index != index:
            self._turn(now)
        counts = table.counts
        used = counts.pop(key, 0)  # pop and put back: the dict stays in least-recently-seen order
        allowed = used < limit
        if allowed:
            used += 1
        counts[key] = used
        if len(counts) > self._max_keys:
            self._evict(counts)
        return Verdict(allowed, max(0, limit - used), (index + 1) * window - now, limit, window, bucket)

    def _turn(self, now: float) -> None:
        """A window ended somewhere: start every table whose window has passed afresh (tables are few)."""
        for (_, window), table in self._tables.items():
            index = int(now // window)
            if table.index != index:
                table.index = index
                table.counts = {}

    def _evict(self, counts: dict[str, int]) -> None:
        for old in list(islice(counts, max(1, self._max_keys // 8))):
            del counts[old]


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """The Hub's headers for a verdict (IETF draft ratelimit-headers, as huggingface_hub parses them):
    `RateLimit: "api";r=0;t=55`, `RateLimit-Policy: "fixed window";"api";q=500;w=300`, and on a refusal
    `Retry-After: 55`. Send them on a 429 (the client then sleeps t+1 and retries); sending them on
    successful answers too is harmless."""
    reset = max(1, math.ceil(verdict.reset_in))
    headers = {
        "RateLimit": f'"{verdict.bucket}";r={verdict.remaining};t={reset}',
        "RateLimit-Policy": (
            f'"fixed window";"{verdict.bucket}";q={verdict.limit};w={max(1, math.ceil(verdict.window))}'
        ),
    }
    if not verdict.allowed:
        headers["Retry-After"] = str(verdict.retry_after)
    return headers


# ------------------------------------------------------------------------------------------- bandwidth


class _Bucket:
    """A key's byte budget as the time at which everything reserved so far will have been paid for
    (GCRA's theoretical arrival time): reservations are served in the order they are made, which is
    what shares a key's rate evenly between its connections."""

    __slots__ = ("rate", "tat")

    def __init__(self, rate: float, tat: float) -> None:
        self.rate = rate
        self.tat = tat


class Bandwidth:
    """Pacing for every response of this process: `pacer()` per response, `take(n)` per chunk.

    `burst` is how far (in seconds of the rate) a sender may run ahead of its schedule: it absorbs
    the lateness of `asyncio.sleep` without losing rate, and bounds the overshoot to `rate * burst`
    bytes. A key's bucket is forgotten once it has been idle for `idle` seconds (a bucket with no
    debt is the same as a new one), so memory follows the number of recently active keys."""

    def __init__(
        self,
        *,
        burst: float = 0.025,
        idle: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not burst >= 0 or not idle > 0:
            raise ValueError(f"invalid pacing parameters burst={burst!r} idle={idle!r}")
        self.burst = burst
        self._idle = idle
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = clock() + idle

    def __len__(self) -> int:
        """How many keys hold a bucket."""
        return len(self._buckets)

    def pacer(self, key: str, per_key: int | None, per_connection: int | None) -> Pacer | None:
        """A pacer for one response of `key` (bytes per second, None for unlimited), or None when
        both are unlimited: then send the file as before (sendfile), without any pacing cost."""
        if per_key is None and per_connection is None:
            return None
        for name, rate in (("per_key", per_key), ("per_connection", per_connection)):
            if rate is not None and rate < 1:
                raise ValueError(f"invalid bandwidth {name}={rate!r} for {key!r}: at least 1 byte/s")
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        bucket = None
        if per_key is not None:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(per_key, now)
            bucket.rate = per_key  # the configuration may have changed since it was made
        return Pacer(self, key, bucket, per_connection)

    def _bucket(self, key: str, mine: _Bucket) -> _Bucket:
        """The key's registered bucket: a pacer's own bucket may have been swept while it stalled."""
        current = self._buckets.get(key)
        if current is None:
            self._buckets[key] = mine
            return mine
        return current

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._idle
        stale = [k for k, b in self._buckets.items() if b.tat < now - self._idle]
        for k in stale:
            del self._buckets[k]


class Pacer:
    """Paces one response: `await take(len(chunk))` before writing each chunk. Made by `Bandwidth.pacer`."""

    __slots__ = ("_bandwidth", "_bucket", "_conn_rate", "_conn_tat", "_key", "chunk_size")

    def __init__(
        self, bandwidth: Bandwidth, key: str, bucket: _Bucket | None, per_connection: int | None
    ) -> None:
        self._bandwidth = bandwidth
        self._key = key
        self._bucket = bucket
        self._conn_rate = per_connection
        self._conn_tat = bandwidth.clock()
        slowest = min(r for r in (per_connection, bucket.rate if bucket else None) if r is not None)
        #: a chunk size that keeps sleeps short and the pace smooth (about half the burst allowance)
        self.chunk_size: int = min(1 << 20, max(4096, int(slowest * max(bandwidth.burst, 0.01) / 2)))

    async def take(self, n: int) -> None:
        """Wait until `n` more bytes may be sent on this connection and by its key."""
        if n <= 0:
            return
        bw = self._bandwidth
        if self._conn_rate is not None:
            now = bw.clock()
            self._conn_tat = max(self._conn_tat, now) + n / self._conn_rate
            wait = self._conn_tat - now - bw.burst
            if wait > 0:
                await asyncio.sleep(wait)
        if self._bucket is not None:
            bucket = self._bucket = bw._bucket(self._key, self._bucket)
            now = bw.clock()
            start = max(bucket.tat, now)
            bucket.tat = end = start + n / bucket.rate
            wait = end - now - bw.burst
            if wait > 0:
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError:
                    if bucket.tat == end:  # nobody queued behind: give the unsent reservation back
                        bucket.tat = start
                    raise
