"""Request-rate counters and bandwidth pacing (coord/limits.py): parsing, fixed windows, concurrency,
memory under a flood of addresses, the Hub's headers as huggingface_hub reads them, and pacing accuracy."""

from __future__ import annotations

import asyncio
import random
import re
import time

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils._http import (
    _parse_retry_after,
    hf_raise_for_status,
    parse_ratelimit_headers,
)

from hubmirror.coord import (
    Bandwidth,
    MemoryRateCounters,
    Pacer,
    Rate,
    Verdict,
    parse_bandwidth,
    parse_rate,
    ratelimit_headers,
)

MiB = 1 << 20


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000/5m", (1000, 300.0)),
        ("100/30", (100, 30.0)),
        ("10/s", (10, 1.0)),
        ("60/m", (60, 60.0)),
        ("5/1.5h", (5, 5400.0)),
        (" 7 / 2d ", (7, 172800.0)),
        ("3/10s", (3, 10.0)),
    ],
)
def test_parse_rate_accepts_units_and_bare_seconds(text: str, expected: tuple[int, float]) -> None:
    rate = parse_rate(text)
    assert rate == expected and isinstance(rate, Rate)
    assert (rate.limit, rate.window) == expected


@pytest.mark.parametrize(
    "text",
    ["", "abc", "1000", "0/5m", "10/0", "10/0s", "10/5x", "10/", "/5m", "-1/5m", "1.5/m", "10/5mm", "10/m/s"],
)
def test_parse_rate_rejects_and_names_the_value(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50MiB/s", 50 * MiB),
        ("1.5 GB/s", 1_500_000_000),
        ("100KB/s", 100_000),
        ("100kB/s", 100_000),
        ("2KiB/sec", 2048),
        ("1GiB/s", 1 << 30),
        ("1024/s", 1024),
        ("512B/s", 512),
    ],
)
def test_parse_bandwidth(text: str, expected: int) -> None:
    assert parse_bandwidth(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "fast", "50MiB", "50MiB/m", "50MiB/h", "50Mb/s", "50mib/s", "50 Mbit/s", "0B/s", "0.1B/s"]
    + ["-5MiB/s", "MiB/s", "1e6B/s"],
)
def test_parse_bandwidth_rejects_and_names_the_value(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_bandwidth(text)


# --------------------------------------------------------------------------------------- fixed windows


def test_a_fixed_window_holds_exactly_and_resets_at_the_epoch_aligned_boundary() -> None:
    clock = FakeClock(1007.0)  # the 10 s window is [1000, 1010): aligned to the epoch, not to the first hit
    c = MemoryRateCounters(clock=clock)
    verdicts = [c.hit_now("token:alice", "api", 5, 10) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True] * 5
    assert [v.remaining for v in verdicts] == [4, 3, 2, 1, 0]
    assert verdicts[0].reset_in == pytest.approx(3.0)
    refused = c.hit_now("token:alice", "api", 5, 10)
    assert not refused.allowed and refused.remaining == 0 and refused.retry_after == 3
    clock.now = 1009.999
    assert not c.hit_now("token:alice", "api", 5, 10).allowed
    clock.now = 1010.0  # the boundary: a fresh window
    fresh = c.hit_now("token:alice", "api", 5, 10)
    assert fresh.allowed and fresh.remaining == 4 and fresh.reset_in == pytest.approx(10.0)
    assert sum(c.hit_now("token:alice", "api", 5, 10).allowed for _ in range(10)) == 4


def test_keys_buckets_and_windows_are_counted_apart() -> None:
    c = MemoryRateCounters(clock=FakeClock(50.0))
    for _ in range(3):
        assert c.hit_now("ip:10.0.0.1", "api", 3, 300).allowed
    assert not c.hit_now("ip:10.0.0.1", "api", 3, 300).allowed
    assert c.hit_now("ip:10.0.0.2", "api", 3, 300).allowed  # another client
    assert c.hit_now("ip:10.0.0.1", "resolvers", 3, 300).allowed  # another budget
    assert c.hit_now("ip:10.0.0.1", "api", 3, 60).allowed  # another policy
    assert len(c) == 4


def test_bad_arguments_are_refused() -> None:
    c = MemoryRateCounters()
    for bucket in ("", "a pi", '"api"', "api;r=1"):
        with pytest.raises(ValueError, match=re.escape(repr(bucket))):
            c.hit_now("k", bucket, 1, 1)
    with pytest.raises(ValueError):
        c.hit_now("k", "api", 0, 1)
    with pytest.raises(ValueError):
        c.hit_now("k", "api", 1, 0)
    with pytest.raises(ValueError):
        MemoryRateCounters(max_keys=0)
    with pytest.raises(TypeError, match="allowed"):
        bool(c.hit_now("k", "api", 1, 1))  # `if verdict:` would always pass: it is refused


def test_concurrent_tasks_never_get_more_than_the_limit_per_window() -> None:
    clock = FakeClock(0.0)
    limit, window = 50, 1.0
    allowed_per_window: dict[int, int] = {}

    async def client(c: MemoryRateCounters, n: int) -> None:
        for _ in range(n):
            v = await c.hit("token:shared", "resolvers", limit, window)
            if v.allowed:
                w = int(clock.now // window)
                allowed_per_window[w] = allowed_per_window.get(w, 0) + 1
            await asyncio.sleep(0)
            clock.now += 0.0007  # 400 tasks x 20 hits walk across ~5 windows

    async def go() -> None:
        c = MemoryRateCounters(clock=clock)
        await asyncio.gather(*(client(c, 20) for _ in range(400)))

    asyncio.run(go())
    assert len(allowed_per_window) >= 5
    assert max(allowed_per_window.values()) == limit  # every window full, none over


def test_a_flood_of_addresses_stays_within_the_cap_and_a_steady_client_keeps_its_count() -> None:
    clock = FakeClock(600.0)
    cap = 10_000
    c = MemoryRateCounters(max_keys=cap, clock=clock)
    for _ in range(5):
        c.hit_now("token:heavy", "resolvers", 5, 300)
    rnd = random.Random(9)
    biggest = 0
    for i in range(1_000_000):
        c.hit_now(f"ip:{rnd.getrandbits(32)}", "resolvers", 5, 300)
        if i % 1000 == 0:
            # the heavy client stays at its limit: recently seen keys are the last to be forgotten
            assert not c.hit_now("token:heavy", "resolvers", 5, 300).allowed
        if i % 50_000 == 0:
            biggest = max(biggest, len(c))
    assert biggest <= cap and len(c) <= cap
    assert not c.hit_now("token:heavy", "resolvers", 5, 300).allowed
    clock.now = 900.0  # the window turns: everything of the old one is dropped at once
    assert c.hit_now("ip:192.0.2.1", "resolvers", 5, 300).allowed
    assert len(c) == 1


# --------------------------------------------------------------------------------------------- headers


def test_headers_parse_with_huggingface_hubs_own_parser() -> None:
    c = MemoryRateCounters(clock=FakeClock(1434.4))
    ok = c.hit_now("token:alice", "resolvers", 2, 300)
    refusal = [c.hit_now("token:alice", "resolvers", 2, 300) for _ in range(2)][-1]
    assert ok.allowed and not refusal.allowed

    h = ratelimit_headers(refusal)
    assert h["RateLimit"] == '"resolvers";r=0;t=66'  # the window ends at 1500: 65.6 s rounds up
    assert h["RateLimit-Policy"] == '"fixed window";"resolvers";q=2;w=300'
    assert h["Retry-After"] == "66"
    info = parse_ratelimit_headers(h)
    assert info is not None
    assert (info.resource_type, info.remaining, info.reset_in_seconds) == ("resolvers", 0, 66)
    assert (info.limit, info.window_seconds) == (2, 300)
    assert _parse_retry_after(h) == 66

    allowed = ratelimit_headers(ok)
    assert "Retry-After" not in allowed
    info = parse_ratelimit_headers(allowed)
    assert info is not None and info.remaining == 1

    # the message the real client shows on a 429 built from these headers
    request = httpx2.Request("GET", "http://mirror.test/gpt2/resolve/main/config.json")
    response = httpx2.Response(429, headers=h, request=request)
    expected = r"Retry after 66 seconds \(0/2 requests remaining in current 300s window\)"
    with pytest.raises(HfHubHTTPError, match=expected):
        hf_raise_for_status(response)


def test_headers_round_up_short_windows_and_never_say_zero() -> None:
    v = Verdict(allowed=False, remaining=0, reset_in=0.0001, limit=3, window=0.5, bucket="api")
    h = ratelimit_headers(v)
    assert h == {
        "RateLimit": '"api";r=0;t=1',
        "RateLimit-Policy": '"fixed window";"api";q=3;w=1',
        "Retry-After": "1",
    }
    info = parse_ratelimit_headers(h)
    assert info is not None and info.reset_in_seconds == 1


# ------------------------------------------------------------------------------------------- bandwidth


async def _consume(pacer: Pacer, t0: float, seconds: float) -> tuple[int, float]:
    sent = 0
    while time.monotonic() - t0 < seconds:
        await pacer.take(pacer.chunk_size)
        sent += pacer.chunk_size
    return sent, time.monotonic()


def _run(bw: Bandwidth, key: str, conns: int, per_key: int | None, per_conn: int | None) -> list[float]:
    """Rates (bytes/s) of `conns` concurrent connections of `key` over ~2 s; the last item is the total."""

    async def go() -> list[float]:
        pacers = [bw.pacer(key, per_key, per_conn) for _ in range(conns)]
        t0 = time.monotonic()
        results = await asyncio.gather(*(_consume(p, t0, 2.0) for p in pacers if p is not None))
        end = max(e for _, e in results)
        return [s / (e - t0) for s, e in results] + [sum(s for s, _ in results) / (end - t0)]

    return asyncio.run(go())


def test_unlimited_costs_nothing() -> None:
    bw = Bandwidth()
    assert bw.pacer("token:alice", None, None) is None
    assert len(bw) == 0
    p = bw.pacer("token:alice", None, 10 * MiB)  # a per-connection cap alone holds no shared bucket
    assert p is not None and len(bw) == 0
    with pytest.raises(ValueError, match="per_key"):
        bw.pacer("token:alice", 0, None)


def test_one_connection_holds_its_keys_limit_within_5_percent() -> None:
    *_, total = _run(Bandwidth(), "token:alice", 1, 4 * MiB, None)
    assert total == pytest.approx(4 * MiB, rel=0.05)


def test_four_connections_of_one_key_share_its_limit_evenly() -> None:
    *each, total = _run(Bandwidth(), "ip:10.0.0.7", 4, 8 * MiB, None)
    assert total == pytest.approx(8 * MiB, rel=0.05)
    for rate in each:
        assert rate == pytest.approx(2 * MiB, rel=0.1)


def test_the_per_connection_cap_holds_alone_and_under_a_key_limit() -> None:
    async def go() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        # run both scenarios at once (separate keys, separate buckets) to keep the suite short
        a = loop.run_in_executor(None, _run, Bandwidth(), "token:capped", 4, 8 * MiB, 1 * MiB)
        b = loop.run_in_executor(None, _run, Bandwidth(), "token:single", 1, None, 3 * MiB)
        return await a, await b

    capped, single = asyncio.run(go())
    *each, total = capped
    for rate in each:  # 4 x 1 MiB/s stays under the key's 8 MiB/s: the cap binds
        assert rate == pytest.approx(1 * MiB, rel=0.05)
    assert total == pytest.approx(4 * MiB, rel=0.05)
    assert single[-1] == pytest.approx(3 * MiB, rel=0.05)


def test_a_cancelled_wait_gives_its_reservation_back() -> None:
    async def go() -> float:
        bw = Bandwidth()
        p = bw.pacer("token:gone", 1000, None)
        assert p is not None
        task = asyncio.create_task(p.take(10_000))  # a 10 s reservation
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        q = bw.pacer("token:gone", 1000, None)
        assert q is not None
        t = time.monotonic()
        await q.take(10)
        return time.monotonic() - t

    assert asyncio.run(go()) < 0.5


def test_idle_buckets_are_dropped_and_a_stalled_pacer_rejoins_its_key() -> None:
    clock = FakeClock(100.0)
    bw = Bandwidth(idle=10, clock=clock)
    stalled = bw.pacer("token:slow", 1 * MiB, None)
    for i in range(1000):
        bw.pacer(f"ip:10.1.{i // 256}.{i % 256}", 1 * MiB, None)
    assert len(bw) == 1001
    clock.now = 125.0
    bw.pacer("ip:192.0.2.9", 1 * MiB, None)  # a sweep runs on the way
    assert len(bw) == 1
    assert stalled is not None
    asyncio.run(stalled.take(100))  # its bucket had no debt: it re-registers without waiting
    assert len(bw) == 2
    again = bw.pacer("token:slow", 1 * MiB, None)
    assert again is not None and again._bucket is stalled._bucket  # one budget for the key
